# The GPU worker image: CUDA PyTorch from the base image, faiss-gpu instead of faiss-cpu.
# Trains teachers and students and builds serving bundles (faiss builds on the GPU when it
# sees one, then converts the index to CPU before writing it).
#
#   docker build -f docker/worker.Dockerfile -t unkd-serve-worker .
# Needs the NVIDIA container toolkit on the host to see a GPU; without one it runs on CPU.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UNKD_DATA_DIR=/data

WORKDIR /app

# Every project dependency except torch (the base image's CUDA build stays) and faiss-cpu,
# replaced by the project's `gpu` extra (faiss-gpu-cu12, same `import faiss`).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; keep = [d for d in p['dependencies'] if not d.replace(' ', '').startswith(('torch', 'faiss-cpu'))]; print('\n'.join(keep + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && python -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'faiss', faiss.__version__)"

COPY README.md ./
COPY training ./training
COPY worker ./worker
COPY service ./service
RUN pip install --no-deps .

RUN useradd --uid 10001 --create-home unkd && mkdir -p /data && chown unkd:unkd /data
USER unkd
VOLUME ["/data"]

# One process per GPU, one job at a time (--pool=solo is the `unkd worker` default).
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
  CMD celery -A worker.celery_app inspect ping --destination "celery@$HOSTNAME" --timeout 10 > /dev/null || exit 1

CMD ["unkd", "worker"]
