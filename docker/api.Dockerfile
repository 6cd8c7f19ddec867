# The API image: FastAPI + uvicorn + CPU faiss, no torch.
# The service never imports torch (tests/unit/test_layering.py), so the image installs every
# project dependency except torch: about 1/10 the size of the worker image, and no CUDA.
#
#   docker build -f docker/api.Dockerfile -t unkd-serve-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UNKD_DATA_DIR=/data

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
# pyproject.toml stays the one list; torch is dropped from it here.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.replace(' ', '').startswith('torch')))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY README.md ./
COPY training ./training
COPY worker ./worker
COPY service ./service
RUN pip install --no-deps . \
 && python -c "import service.api.app, sys; assert 'torch' not in sys.modules, 'the API must not import torch'"

# Same uid as the worker image: both write to the shared artifact volume at /data.
RUN useradd --uid 10001 --create-home unkd && mkdir -p /data && chown unkd:unkd /data
USER unkd
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"

CMD ["unkd", "api", "--host", "0.0.0.0", "--port", "8000"]
