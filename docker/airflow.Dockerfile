# The Airflow image for docker-compose: the official image plus this project's Airflow-side requirements.
# The engine's torch stack is NOT installed here: in production it runs in the GPU pods (inference_image/).
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /tmp/requirements.txt
COPY inference_image /tmp/inference_image
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps /tmp/inference_image
