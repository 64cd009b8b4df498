"""The lifecycle diagram says exactly what the state machine does."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from trialflow import graph
from trialflow.domain import lifecycle as lc

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def machine_moves() -> set[tuple[str, str, str]]:
    """(from, to, trigger) read from the transitions.Machine itself, not from the table."""
    moves = set()
    for trigger, event in lc.MACHINE.events.items():
        for source, transitions in event.transitions.items():
            for t in transitions:
                if t.dest is not None:
                    moves.add((source, t.dest, trigger))
    return moves


def machine_internal() -> set[tuple[str, str]]:
    return {(source, trigger) for trigger, event in lc.MACHINE.events.items()
            for source, transitions in event.transitions.items() for t in transitions if t.dest is None}


def mermaid_arrows(text: str) -> set[tuple[str, str, str]]:
    return {(a, b, trigger) for a, b, trigger in re.findall(r"^    (\w+) --> (\w+) : (\w+) \(\w+\)$", text, re.M)}


def mermaid_notes(text: str) -> set[tuple[str, str]]:
    out = set()
    for state, body in re.findall(r"^    note right of (\w+)\n(.*?)^    end note$", text, re.M | re.S):
        out |= {(state, trigger) for trigger in re.findall(r"^        (\w+) \(\w+\)$", body, re.M)}
    return out


def test_every_arrow_of_the_mermaid_diagram_is_a_transition_of_the_machine_and_none_is_missing():
    text = graph.mermaid()
    assert text.startswith("stateDiagram-v2\n    [*] --> new\n")
    assert mermaid_arrows(text) == machine_moves()


def test_every_internal_step_is_noted_on_each_state_it_may_happen_in():
    assert mermaid_notes(graph.mermaid()) == machine_internal()


def test_the_final_states_end_the_diagram():
    ends = set(re.findall(r"^    (\w+) --> \[\*\]$", graph.mermaid(), re.M))
    assert ends == set(lc.FINAL_STATES)


def test_each_arrow_fires_on_the_machine_as_drawn():
    class Model:
        state = None

    for a, b, trigger in mermaid_arrows(graph.mermaid()):
        model = Model()
        model.state = a
        assert lc.fire(model, trigger) == (a, b)


def test_the_dot_graph_has_the_same_transitions_and_every_state():
    text = graph.dot()
    assert text.startswith("digraph lifecycle {") and text.rstrip().endswith("}")
    arrows = set(re.findall(r'^    "(\w+)" -> "(\w+)" \[label="(\w+)\\n\(\w+\)"\];$', text, re.M))
    assert arrows == machine_moves()
    declared = set(re.findall(r'^    "(\w+)" \[label=', text, re.M))
    assert declared == set(lc.STATES)
    assert set(re.findall(r'^    "(\w+)" \[label="[^"]*", peripheries=2\];$', text, re.M)) == set(lc.FINAL_STATES)
    assert text.count("{") == text.count("}") and text.count('"') % 2 == 0


def test_the_readme_shows_the_same_diagram_as_docs_lifecycle_md():
    import re
    readme = (DOC.parents[1] / "README.md").read_text()
    diagram = re.search(r"```mermaid\n.*?```", graph.markdown("mermaid"), re.S).group(0)
    assert diagram in readme, "lifecycle changed: copy the mermaid block of docs/lifecycle.md into README.md"


def test_docs_lifecycle_md_is_up_to_date_with_the_table():
    assert DOC.exists(), "run: trialflow graph -o docs/lifecycle.md"
    assert DOC.read_text() == graph.markdown("mermaid"), "lifecycle changed: run trialflow graph -o docs/lifecycle.md"


def test_the_steps_table_in_the_doc_lists_every_step_with_who_may_take_it():
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \| (\w+) \|", graph.steps_table(), re.M)
    assert rows == [(s.trigger, s.who) for s in lc.TABLE]


@pytest.mark.parametrize("fmt, first_line", [("mermaid", "stateDiagram-v2"), ("dot", "digraph lifecycle {")])
def test_trialflow_graph_writes_the_diagram_to_a_file(tmp_path, capsys, fmt, first_line):
    out = tmp_path / "nested" / f"lifecycle.{fmt}"
    assert graph.cli_graph(argparse.Namespace(output=str(out), format=fmt)) == 0
    assert out.read_text().splitlines()[0] == first_line
    assert f"wrote {out}: {len(lc.STATES)} states" in capsys.readouterr().out


def test_trialflow_graph_into_markdown_wraps_the_diagram_in_a_fenced_block(tmp_path):
    out = tmp_path / "lifecycle.md"
    assert graph.cli_graph(argparse.Namespace(output=str(out), format="mermaid")) == 0
    assert "```mermaid\nstateDiagram-v2\n" in out.read_text()


def test_trialflow_graph_without_output_prints_to_stdout(capsys):
    assert graph.cli_graph(argparse.Namespace(output=None, format="dot")) == 0
    assert capsys.readouterr().out == graph.dot()


def test_an_unwritable_output_is_an_error_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert graph.cli_graph(argparse.Namespace(output=str(blocker / "lifecycle.md"), format="mermaid")) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot write {blocker / 'lifecycle.md'}")
