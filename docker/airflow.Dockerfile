# The Airflow image for docker-compose: the official image plus this project's Airflow-side requirements and its
# two packages, detection_pipeline (plugins/) and detection_engine (inference_image/), installed into site-packages:
# the DAGs (mounted from dags/) import them from there, not from a folder on the path.
#
# WITH_ENGINE=true (the default) also installs the engine's torch stack, so the embedded default
# (DETECTION_LAUNCHER=local) runs shards inside the Airflow containers. A production deployment whose shards run
# in GPU pods (DETECTION_LAUNCHER=kubernetes) builds with WITH_ENGINE=false: its Airflow needs no torch.
FROM apache/airflow:3.3.2-python3.11
ARG WITH_ENGINE=true
COPY requirements.txt /tmp/requirements.txt
COPY inference_image /tmp/inference_image
COPY plugins /tmp/plugins
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /tmp/requirements.txt \
 && if [ "${WITH_ENGINE}" = "true" ]; then pip install --no-cache-dir -r /tmp/inference_image/requirements.txt; fi \
 && pip install --no-cache-dir --no-deps /tmp/inference_image /tmp/plugins
