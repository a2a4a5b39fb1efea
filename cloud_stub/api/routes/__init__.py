"""One router per resource; `cloud_stub.api.app.create_app` includes them all under /v1."""
