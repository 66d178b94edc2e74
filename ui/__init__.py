"""vlmgate.ui: the Gradio demo, a client of the gateway's public API (see ui/app.py; run as `vlmgate ui`)."""

import os

# Gradio phones home (analytics, version check) unless told not to; this machine's network is closed and a demo
# should not leak usage anyway. Set before any submodule imports gradio.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
