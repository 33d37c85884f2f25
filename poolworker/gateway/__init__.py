"""HTTP gateway: vLLM's and TEI's online pooling API in front of the worker pool."""
