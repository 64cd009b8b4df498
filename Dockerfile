# trialflow: API (`trialflow serve`), Celery worker and beat all run from this one image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY trialflow ./trialflow
COPY workers ./workers
RUN pip install . && rm -rf build *.egg-info

# Reference data (accounts, staff, instances, PQL grades); compose mounts ./config over it.
COPY config ./config

# Never run as root: a fixed uid so mounted volumes can be owned to match.
RUN useradd --system --uid 10001 --create-home --home-dir /home/trialflow trialflow \
 && install -d -m 0700 -o trialflow -g trialflow /var/lib/trialflow
USER trialflow

# The data directory (SQLite without a database URL, beat's schedule, liveness files, the signup
# spool): private to trialflow's user; a new named volume mounted here starts with this owner and mode.
ENV TRIALFLOW_CONFIG_DIR=/app/config \
    TRIALFLOW_DATA_DIR=/var/lib/trialflow \
    TRIALFLOW_LOG_JSON=true
EXPOSE 8000
CMD ["trialflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
