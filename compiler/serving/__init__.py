"""Serving: the embedded tritonserver, the scoring client, and Triton's statistics of where a request's time went."""
