"""The growth dashboard: ``/dashboard`` (HTML, charts drawn here as inline SVG) and ``/api/funnel``.

Everything the page needs comes from trialflow itself (one stylesheet under /dashboard/static/);
the Content-Security-Policy says so, so a browser refuses anything from elsewhere.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from trialflow.api import docs
from trialflow.api.common import RT, error
from trialflow.api.schemas import FunnelOrSplit
from trialflow.funnel import STEPS, Cohort, Funnel, duration, percent, render_csv, split_from_db, split_to_dict

router = APIRouter(tags=["growth"])

Weeks = Annotated[int, Query(ge=1, le=104, description="weekly cohorts to show")]
By = Annotated[str | None, Query(pattern="^(source|case|ae|ce|reason)$",
                                 description="split by source, case, ae, ce or reason")]
CSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"   # packaged with trialflow (package-data)
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
# Series colours, chosen to stay apart for the common colour-vision deficiencies.
REQUESTS, STARTS = "#9aa5b1", "#2f6fde"
# Dashes too, so a series that coincides with another (activation = conversion) stays visible.
RATE_SERIES = (("start_rate", "start / request", "#2f6fde", ""), ("activation_rate", "activation", "#e08a00", ""),
               ("conversion_rate", "conversion", "#159c6a", "6 5"))


@router.get("/api/funnel", responses=docs.answers(
    {200: (FunnelOrSplit, "The funnel (with by: FunnelSplit, one funnel per value).")}, *docs.STAFF, 422))
async def funnel_json(rt: RT, weeks: Weeks = 12, by: By = None):
    """The funnel by weekly cohort, as ``trialflow report --json [--by ...]`` prints it."""
    funnels = await run_in_threadpool(split_from_db, rt, by, weeks)
    return split_to_dict(funnels, by) if by else funnels[None].to_dict()


class CsvResponse(PlainTextResponse):
    media_type = "text/csv"


@router.get("/api/funnel.csv", response_class=CsvResponse, responses=docs.answers({}, *docs.STAFF, 422))
async def funnel_csv(rt: RT, weeks: Weeks = 12, by: By = None):
    """The funnel as CSV, as ``trialflow report --csv [--by ...]`` prints it: a line per week and
    ``all``, per value of ``by``."""
    funnels = await run_in_threadpool(split_from_db, rt, by, weeks)
    return CsvResponse(render_csv(funnels, by),
                       headers={"Content-Disposition": f'attachment; filename="funnel{"-by-" + by if by else ""}.csv"'})


@router.get("/dashboard", response_class=HTMLResponse, responses=docs.answers({}, *docs.STAFF, 422))
async def dashboard(rt: RT, weeks: Weeks = 12, by: By = None):
    """Trial requests, starts, activation, conversion and time in each step, with charts; with
    ``by``, also a table of the weeks shown split by that."""
    funnels = await run_in_threadpool(split_from_db, rt, None, weeks)
    split = await run_in_threadpool(split_from_db, rt, by, weeks) if by else None
    return HTMLResponse(render_page(funnels[None], by, split),
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


@router.get("/dashboard/static/{name}", include_in_schema=False)
def static_file(name: str):
    """The dashboard's own assets, packaged with trialflow."""
    suffix = name[name.rfind("."):] if "." in name else ""
    # Only plain file names from the package's static folder: no paths, nothing else on disk.
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        return error(404, f"No asset {name}.")
    asset = STATIC_DIR / name
    if not asset.is_file():
        return error(404, f"No asset {name}.")
    return Response(asset.read_bytes(), media_type=STATIC_TYPES[suffix], headers={"Cache-Control": "max-age=300"})


# --- the page ------------------------------------------------------------------------------

def _kpi(metric: str, label: str, value: str, hint: str) -> str:
    return (f'<div class="kpi" data-metric="{metric}"><div class="label">{escape(label)}</div>'
            f'<div class="value">{escape(value)}</div><div class="hint">{escape(hint)}</div></div>')


def split_table(by: str, split: dict[str | None, Funnel]) -> str:
    head = (by, "requests", "joiners", "starts", "start / request", "activated", "activation", "converted",
            "conversion")
    rows = []
    for value, funnel in sorted(split.items(), key=lambda item: (item[0] is None, item[0] or "")):
        c = funnel.total
        name = value if value is not None else "(none)"
        cells = [("requests", str(c.requests)), ("joiners", str(c.joiners)), ("starts", str(c.starts)),
                 ("start_rate", percent(c.start_rate)), ("activated", str(c.activated)),
                 ("activation_rate", percent(c.activation_rate)), ("converted", str(c.converted)),
                 ("conversion_rate", percent(c.conversion_rate))]
        tds = "".join(f'<td data-field="{f}">{escape(v)}</td>' for f, v in cells)
        rows.append(f'<tr data-group="{escape(name)}"><th scope="row">{escape(name)}</th>{tds}</tr>')
    ths = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    return (f'<div class="table-wrap"><table id="split" data-by="{escape(by)}"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def render_page(funnel: Funnel, by: str | None = None, split: dict[str | None, Funnel] | None = None) -> str:
    total = funnel.total
    links = " · ".join(f'<a href="/dashboard?weeks={len(funnel.cohorts)}&amp;by={b}">{b}</a>'
                       for b in ("source", "case", "ae", "ce", "reason"))
    split_section = (f'<section>\n  <h2>By {escape(by)}, all weeks shown</h2>\n  {split_table(by, split)}\n</section>\n'
                     if by and split is not None else "")
    as_of = funnel.as_of.strftime("%Y-%m-%d %H:%M UTC")
    weeks = len(funnel.cohorts)
    kpis = "".join([
        _kpi("requests", "Trial requests", str(total.requests), "signups, joiners excluded"),
        _kpi("joiners", "Joiners", str(total.joiners), "joined their company's instance"),
        _kpi("starts", "Trial starts", str(total.starts), "reached an instance"),
        _kpi("start_rate", "Start / request", percent(total.start_rate), f"{total.starts} of {total.requests}"),
        _kpi("activation_rate", "Activation", percent(total.activation_rate), f"{total.activated} of {total.starts} starts are PQL (A/B)"),
        _kpi("conversion_rate", "Conversion", percent(total.conversion_rate), f"{total.converted} of {total.starts} starts converted"),
    ])
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trialflow · trial funnel</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
</head>
<body>
<header>
  <h1>Cloud trial funnel</h1>
  <p class="sub">Cohorts by signup week (ISO, UTC): the last <span id="weeks">{weeks}</span> weeks, as of
  <time id="as-of" datetime="{funnel.as_of.isoformat()}">{as_of}</time>. Recent weeks are still maturing.</p>
</header>
<main>
<section class="kpis" aria-label="All weeks shown">{kpis}</section>
<section class="charts">
  <figure><figcaption>Trial requests and starts per week</figcaption>{requests_chart(funnel.cohorts)}</figure>
  <figure><figcaption>Start / request, activation and conversion per week</figcaption>{rates_chart(funnel.cohorts)}</figure>
  <figure><figcaption>Median time in each step, all weeks shown</figcaption>{steps_chart(total)}</figure>
</section>
<section>
  <h2>By week</h2>
  {cohort_table(funnel)}
</section>
{split_section}<p class="sub">Split by: {links}</p>
</main>
<footer>Same numbers as <code>trialflow report</code>, <a href="/api/funnel?weeks={weeks}">/api/funnel</a> and
<a href="/api/funnel.csv?weeks={weeks}">/api/funnel.csv</a>.
Activation = PQL grade A or B among starts; conversion = converted among starts.</footer>
</body>
</html>
"""


def cohort_table(funnel: Funnel) -> str:
    head = ("week", "from", "requests", "joiners", "starts", "start / request", "activated", "activation", "converted",
            "conversion", *(label for _, label in STEPS))

    def cells(c: Cohort) -> list[tuple[str, str]]:
        return [("requests", str(c.requests)), ("joiners", str(c.joiners)), ("starts", str(c.starts)), ("start_rate", percent(c.start_rate)),
                ("activated", str(c.activated)), ("activation_rate", percent(c.activation_rate)),
                ("converted", str(c.converted)), ("conversion_rate", percent(c.conversion_rate)),
                *((key, duration(c.median_seconds(key))) for key, _ in STEPS)]

    def row(c: Cohort, week: str, start: str, cls: str = "") -> str:
        tds = "".join(f'<td data-field="{f}">{escape(v)}</td>' for f, v in cells(c))
        return f'<tr data-week="{escape(week)}"{cls}><th scope="row">{escape(week)}</th><td>{escape(start)}</td>{tds}</tr>'

    body = "".join(row(c, c.week, c.week_start.isoformat()) for c in funnel.cohorts)
    foot = row(funnel.total, "all", "", ' class="total"')
    ths = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    return f'<div class="table-wrap"><table id="cohorts"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table></div>'


# --- charts: plain SVG, sized in user units and scaled by CSS ------------------------------

W, H = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 24, 36


def _short(week: str) -> str:
    return week.split("-")[-1]


def _nice_max(value: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if value <= step * 4:
            return step * 4
    return -(-value // 10000) * 10000


def _svg(label: str, body: str, chart_id: str, height: int = H) -> str:
    return (f'<svg id="{chart_id}" role="img" aria-label="{escape(label)}" viewBox="0 0 {W} {height}" '
            f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">{body}</svg>')


def _grid(top_value: float, fmt) -> str:
    lines = []
    for i in range(5):
        value = top_value * i / 4
        y = H - BOTTOM - (H - TOP - BOTTOM) * i / 4
        lines.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ec"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5f6b7a">{fmt(value)}</text>')
    return "".join(lines)


def _legend(items: list[tuple[str, str]], x: float = LEFT) -> str:
    out = []
    for label, colour in items:
        out.append(f'<rect x="{x:.1f}" y="6" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14:.1f}" y="15" fill="#33404f">{escape(label)}</text>')
        x += 24 + 7 * len(label)
    return "".join(out)


def requests_chart(cohorts: list[Cohort]) -> str:
    top = _nice_max(max((c.requests for c in cohorts), default=0) or 1)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / max(len(cohorts), 1)
    bar = min(slot * 0.36, 28)
    parts = [_grid(top, lambda v: f"{v:.0f}"),
             _legend([("requests", REQUESTS), ("starts", STARTS)])]
    for i, c in enumerate(cohorts):
        centre = LEFT + slot * (i + 0.5)
        for j, (value, colour, series) in enumerate(((c.requests, REQUESTS, "requests"), (c.starts, STARTS, "starts"))):
            x = centre - bar + j * bar
            h = plot_h * value / top
            y = H - BOTTOM - h
            parts.append(f'<rect class="bar" data-week="{c.week}" data-series="{series}" data-value="{value}" '
                         f'x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{c.week} {series}: {value}</title></rect>')
            if value:
                parts.append(f'<text x="{x + (bar - 2) / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" fill="#33404f">{value}</text>')
        parts.append(f'<text x="{centre:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" fill="#5f6b7a">{_short(c.week)}</text>')
    return _svg("Trial requests and starts per week", "".join(parts), "chart-requests")


def rates_chart(cohorts: list[Cohort]) -> str:
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / max(len(cohorts), 1)
    parts = [_grid(1.0, lambda v: f"{v * 100:.0f}%"), _legend([(label, colour) for _, label, colour, _ in RATE_SERIES])]
    for i, c in enumerate(cohorts):
        parts.append(f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" fill="#5f6b7a">{_short(c.week)}</text>')
    for attr, label, colour, dashes in RATE_SERIES:
        run: list[str] = []
        stroke = f'fill="none" stroke="{colour}" stroke-width="2"' + (f' stroke-dasharray="{dashes}"' if dashes else "")
        for i, c in enumerate(cohorts):
            value = getattr(c, attr)
            if value is None:  # no denominator that week: a gap, not a zero
                if len(run) > 1:
                    parts.append(f'<polyline points="{" ".join(run)}" {stroke}/>')
                run = []
                continue
            x, y = LEFT + slot * (i + 0.5), H - BOTTOM - plot_h * value
            run.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle class="point" data-week="{c.week}" data-series="{attr}" data-value="{value}" '
                         f'cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"><title>{c.week} {label}: {percent(value)}</title></circle>')
        if len(run) > 1:
            parts.append(f'<polyline points="{" ".join(run)}" {stroke}/>')
    return _svg("Start / request, activation and conversion per week", "".join(parts), "chart-rates")


def steps_chart(total: Cohort) -> str:
    rows = [(key, label, total.median_seconds(key), len(total.seconds[key])) for key, label in STEPS]
    longest = max((s for _, _, s, _ in rows if s), default=0) or 1
    label_w, row_h, height = 190, 40, TOP + 40 * len(rows) + 8
    parts = []
    for i, (key, label, seconds, n) in enumerate(rows):
        y = TOP + i * row_h
        width = (W - label_w - 110) * (seconds or 0) / longest
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" fill="#33404f">{escape(label)}</text>'
                     f'<rect class="bar" data-step="{key}" data-value="{seconds if seconds is not None else ""}" '
                     f'x="{label_w}" y="{y + 4}" width="{width:.1f}" height="18" fill="{STARTS}"/>'
                     f'<text x="{label_w + width + 6:.1f}" y="{y + 17}" fill="#33404f">{escape(duration(seconds))} (n={n})</text>')
    return _svg("Median time in each step", "".join(parts), "chart-steps", height)
