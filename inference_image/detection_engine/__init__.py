"""Batch object detection over one shard of image URIs: the program inside each GPU pod.

Imports nothing from Airflow. `schema` and `layout` import nothing heavier than pyarrow.
"""

__version__ = "0.1.0"
