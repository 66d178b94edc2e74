"""The Gradio demo's layout: chat, side-by-side comparison, and an admin tab (adapters, live SLOs).

Run as: vlmgate ui --gateway http://127.0.0.1:8000     (then open http://127.0.0.1:7860)
Or from Python: launch_ui("http://127.0.0.1:8000", port=7860, block=False) next to a running gateway.

The UI is a client of the gateway's public API and nothing more (ui/client.py); what the buttons do lives in
ui/handlers.py. Element ids (`elem_id`) are stable: the browser test (tests/e2e/test_ui_browser.py) uses them.
"""

from __future__ import annotations

import gradio as gr

from vlmgate.ui.client import GatewayClient
from vlmgate.ui.handlers import ADAPTER_COLUMNS, Handlers
from vlmgate.ui.slo_view import TABLE_HEADERS

SLO_REFRESH_S = 10.0  # live SLO plots: often enough to watch a load test, rarely enough to stay cheap


def build_app(
    gateway_url: str,
    *,
    api_key: str | None = None,
    admin_key: str | None = None,
    max_images: int | None = 2,
    max_tokens: int = 256,
    client: GatewayClient | None = None,
) -> gr.Blocks:
    """The demo as a gr.Blocks, not yet launched."""
    client = client or GatewayClient(gateway_url, api_key=api_key, admin_key=admin_key)
    h = Handlers(client, max_images=max_images)
    with gr.Blocks(title="vlmgate demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## vlmgate demo\nA client of the gateway at `{client.base_url}`: the same OpenAI-compatible API, auth "
            "and metrics as any other client. Upload images, ask about them, compare a base with its adapters."
        )
        with gr.Row():
            model = gr.Dropdown(
                label="Model (base or adapter)", choices=[], allow_custom_value=True, scale=5, elem_id="model-picker"
            )
            refresh = gr.Button("↻ Refresh models", scale=1, elem_id="refresh-models")
        models_status = gr.Markdown(elem_id="models-status")
        with gr.Accordion("Generation settings and connection", open=False):
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", elem_id="temperature")
                tokens = gr.Slider(1, 2048, value=max_tokens, step=1, label="Max tokens", elem_id="max-tokens")
                exact = gr.Checkbox(
                    label="Generate exactly 'Max tokens' (ignore end of sequence: for measuring speed)",
                    elem_id="exact-tokens",
                )
            api_key_box = gr.Textbox(
                label="API key (only if the gateway requires one; overrides --api-key)",
                type="password",
                elem_id="api-key",
            )

        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chatbot = gr.Chatbot(label="Conversation", height=440, elem_id="chatbot", buttons=["copy"])
                box = gr.MultimodalTextbox(
                    placeholder="Ask about an image (attach images with the clip), then press Enter",
                    file_types=["image"],
                    file_count="multiple",
                    sources=["upload"],
                    elem_id="chat-input",
                    show_label=False,
                )
                with gr.Row():
                    stop = gr.Button("■ Stop", variant="stop", elem_id="chat-stop")
                    clear = gr.Button("Clear conversation", elem_id="chat-clear")

            with gr.Tab("Compare side by side", id="compare"):
                gr.Markdown("The same image and question, answered by two models or adapters at the same time.")
                with gr.Row():
                    with gr.Column(scale=1):
                        image = gr.Image(
                            label="Image", type="filepath", sources=["upload"], height=220, elem_id="compare-image"
                        )
                        question = gr.Textbox(
                            label="Question",
                            value="What shape is in the image, and what colour?",
                            elem_id="compare-question",
                        )
                        with gr.Row():
                            run = gr.Button("Compare", variant="primary", elem_id="compare-run")
                            stop_compare = gr.Button("■ Stop", variant="stop", elem_id="compare-stop")
                    with gr.Column(scale=1):
                        model_a = gr.Dropdown(
                            label="Model A", choices=[], allow_custom_value=True, elem_id="compare-model-a"
                        )
                        answer_a = gr.Textbox(label="Answer A", lines=5, interactive=False, elem_id="compare-answer-a")
                        stats_a = gr.Markdown(elem_id="compare-stats-a")
                    with gr.Column(scale=1):
                        model_b = gr.Dropdown(
                            label="Model B", choices=[], allow_custom_value=True, elem_id="compare-model-b"
                        )
                        answer_b = gr.Textbox(label="Answer B", lines=5, interactive=False, elem_id="compare-answer-b")
                        stats_b = gr.Markdown(elem_id="compare-stats-b")

            with gr.Tab("Admin", id="admin") as admin_tab:
                admin_key_box = gr.Textbox(
                    label="Admin key" + (" (given on the command line; type here to override)" if admin_key else ""),
                    type="password",
                    elem_id="admin-key",
                )
                gr.Markdown("### Adapters")
                adapters_status = gr.Markdown(elem_id="adapters-status")
                adapters = gr.Dataframe(headers=ADAPTER_COLUMNS, value=[], interactive=False, elem_id="adapters-table")
                refresh_adapters = gr.Button("↻ Refresh adapters", elem_id="refresh-adapters")
                with gr.Row():
                    with gr.Column():
                        new_name = gr.Textbox(label="Name", elem_id="adapter-name")
                        new_path = gr.Textbox(label="Path (inside the gateway's adapter store)", elem_id="adapter-path")
                        with gr.Row():
                            new_version = gr.Textbox(label="Version (optional)", elem_id="adapter-version")
                            new_pinned = gr.Checkbox(label="Pinned (never evicted)", elem_id="adapter-pinned")
                        register = gr.Button("Register and load", variant="primary", elem_id="adapter-register")
                    with gr.Column():
                        to_remove = gr.Dropdown(label="Adapter to remove", choices=[], elem_id="adapter-remove-name")
                        remove = gr.Button("Remove", variant="stop", elem_id="adapter-remove")
                        admin_result = gr.Markdown(elem_id="admin-result")
                gr.Markdown("### Live SLO status (`GET /v1/slo`)")
                with gr.Row():
                    live = gr.Checkbox(label=f"Refresh every {SLO_REFRESH_S:g} s", value=True, elem_id="slo-live")
                    refresh_slo = gr.Button("↻ Refresh now", elem_id="slo-refresh")
                slo_status = gr.Markdown(elem_id="slo-status")
                latency_plot = gr.Plot(label="Latency percentiles", show_label=False, elem_id="slo-latency")
                attainment_plot = gr.Plot(label="Attainment and burn rate", show_label=False, elem_id="slo-attainment")
                slo_table = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False, elem_id="slo-table")
                timer = gr.Timer(SLO_REFRESH_S, active=False)

        # --- wiring ----------------------------------------------------------------------------------------------
        pickers = [model, model_a, model_b, models_status]
        demo.load(h.refresh_models, [model, api_key_box], pickers)
        refresh.click(h.refresh_models, [model, api_key_box], pickers)

        respond_inputs = [chatbot, model, temperature, tokens, exact, api_key_box]
        sent = box.submit(h.add_user_turn, [box, chatbot], [box, chatbot], queue=False).then(
            h.respond, respond_inputs, chatbot
        )
        stop.click(None, cancels=[sent])
        clear.click(lambda: [], None, chatbot, cancels=[sent])

        compared = run.click(
            h.compare,
            [image, question, model_a, model_b, temperature, tokens, exact, api_key_box],
            [answer_a, answer_b, stats_a, stats_b],
        )
        stop_compare.click(None, cancels=[compared])

        adapter_outputs = [adapters, to_remove, adapters_status]
        slo_outputs = [latency_plot, attainment_plot, slo_table, slo_status]
        # Adapters and SLOs are fetched when the tab opens (not on page load): they may need the admin key.
        admin_tab.select(h.list_adapters, [admin_key_box], adapter_outputs).then(
            h.slo_status, [api_key_box], slo_outputs
        ).then(lambda on: gr.Timer(active=on), live, timer)
        refresh_adapters.click(h.list_adapters, [admin_key_box], adapter_outputs)
        # Registering or removing changes the model list: refresh the pickers too.
        register.click(
            h.register_adapter, [new_name, new_path, new_version, new_pinned, admin_key_box], admin_result
        ).then(h.list_adapters, [admin_key_box], adapter_outputs).then(h.refresh_models, [model, api_key_box], pickers)
        remove.click(h.remove_adapter, [to_remove, admin_key_box], admin_result).then(
            h.list_adapters, [admin_key_box], adapter_outputs
        ).then(h.refresh_models, [model, api_key_box], pickers)
        refresh_slo.click(h.slo_status, [api_key_box], slo_outputs)
        timer.tick(h.slo_status, [api_key_box], slo_outputs, show_progress="hidden")
        live.change(lambda on: gr.Timer(active=on), live, timer)
    return demo


def launch_ui(
    gateway_url: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    api_key: str | None = None,
    admin_key: str | None = None,
    max_images: int | None = 2,
    max_tokens: int = 256,
    block: bool = True,
    concurrency: int = 16,
) -> gr.Blocks:
    """Build and serve the demo. With block=False it returns at once (the server runs in a thread); call
    `.close()` on the returned Blocks to stop it."""
    demo = build_app(gateway_url, api_key=api_key, admin_key=admin_key, max_images=max_images, max_tokens=max_tokens)
    # Gradio runs one event per handler at a time by default; a demo shared by several people must not queue a
    # chat behind another one, so allow as many concurrent events as the gateway is likely to admit.
    demo.queue(default_concurrency_limit=concurrency)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        show_error=True,
        ssr_mode=False,  # no Node.js server: the plain Python server is all the demo needs
        theme=gr.themes.Soft(),
        quiet=True,
    )
    return demo
