# The tagging service's image, for deploy/kuberay.yaml (Ray Serve on Kubernetes):
#   docker build -t landmark-tagger:0.5.0 .
# Ray's own image (its Python, Ray and the user it runs as), plus the serving code and the
# shipped models; no training code or data. For one machine without Ray: python -m landmark.serve.
FROM rayproject/ray:2.60.0-py311-cpu

WORKDIR /home/ray/landmark
COPY --chown=ray:users requirements.txt ./
# torch's CPU build (the default wheel carries CUDA, gigabytes unused here)
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements.txt "ray[serve]==2.60.0"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users landmark/ landmark/
COPY --chown=ray:users models/ models/
COPY --chown=ray:users deploy/ray-serve.yaml deploy/
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import landmark.serve.replicas"

ENV LANDMARK_HUB_REPO=off \
    LANDMARK_PLACES=/places \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_SERVE_DEFAULT_HTTP_HOST=0.0.0.0
EXPOSE 8000
# KubeRay starts Ray in the pods and submits serveConfigV2; run alone, this serves on :8000
CMD ["serve", "run", "deploy/ray-serve.yaml"]
