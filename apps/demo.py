"""The Gradio demo: original vs pruned, side by side (Generate, Quality, Structure tabs)."""

from __future__ import annotations

import inspect
import os
import threading
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from entpruner_sdk.apps.pair import (
    DEFAULT_COUNT,
    DEFAULT_PRUNED,
    ModelPair,
    ModelThread,
    PairKey,
    PairShelf,
    SideResult,
    Stopped,
    default_sampling,
    generate_pair,
    governed_settings,
    load_pair,
    structure_facts,
)
from entpruner_sdk.compress.report import spread
from entpruner_sdk.data.datasets import recorded_data
from entpruner_sdk.objectives import OBJECTIVES, objective_for
from entpruner_sdk.objectives.flow import DIFFUSION_FORMS, LAST_STEPS, FlowMatching
from entpruner_sdk.sampling import to_picture
from entpruner_sdk.utils.device import arithmetic
from entpruner_sdk.utils.network import check_address, is_loopback

if TYPE_CHECKING:  # Gradio is imported when the demo is built
    import gradio as gr

BACKENDS = ("PyTorch", "ONNX Runtime")
# the demo's SiT sampler fields, in their order on the page and in the API
SETTING_NAMES = ("diffusion_form", "diffusion_norm", "last_step", "last_step_size", "atol",
                 "rtol")
# small images are upscaled (nearest, by a whole factor) so they stay visible; larger ones,
# such as DiT-XL/2's 256 x 256, are shown at their own size, since shrinking them would hide
# the very differences the page is for
DISPLAY_SIZE = 96
QUICK_BATCHES = 5  # the quick evaluation samples each model in this many batches
NO_EVALUATION = ("*No quick evaluation yet: it samples both models from the same noise and "
                 "compares them with the data.*")
# lossless: Gradio's default (WebP) is lossy, and would blur the very samples being compared
GALLERY_FORMAT = "png"
# Gradio gives a gallery at least 450 px of height (55% of the window at most), so four
# samples in a row sat above an empty half. The galleries take their images' height instead.
DEMO_CSS = """#original-gallery .grid-wrap, #pruned-gallery .grid-wrap {
  min-height: 0; max-height: none; overflow-y: visible; }"""


def build_demo(original: str | None = None, pruned: str = DEFAULT_PRUNED,
               onnx: bool = False, data: str | None = None, vae: str | None = None,
               family: str | None = None, device: str | None = None,
               notify: Callable[[str], None] | None = None) -> gr.Blocks:
    """The demo as a ``gr.Blocks`` app (call ``.launch(**launch_styling())`` on it, as
    ``launch`` does). ``original``: by default the model the pruned one was compressed from
    (``load_pair``). ``vae``: the VAE folder that decodes latent models' samples (DiT-XL/2,
    SiT-XL/2); ``family``: for a released original checkpoint (by default the pruned model's);
    ``device``: where PyTorch samples and evaluates (by default CUDA when present, else the
    CPU). ``data``: the quick evaluation's data for ``pruned``; another pruned model loaded
    from the page evaluates on its own report's data. A viewer's Load changes only that
    viewer's page. ``notify``, when given, is told what the start is doing and each problem
    the page will show (those begin with "problem: "), for a console that would otherwise
    only say that the server runs."""
    import gradio as gr

    notify = notify or (lambda message: None)
    notify(f"loading {pruned} and {original or 'the original it records'}"
           + (", and exporting both to ONNX (the first time; kept in the cache)" if onnx else ""))

    shelf = PairShelf(lambda original, pruned: load_pair(original, pruned, onnx, vae, family,
                                                         device))
    launched = PairShelf.key(original, pruned)
    pair = shelf.get(launched)
    for error in pair.errors:  # the page starts all the same: another pair can be loaded there
        notify(f"problem: {error}")
    styling = {} if _styled_at_launch() else {"css": DEMO_CSS}  # Gradio 5 styles the Blocks
    with gr.Blocks(title="entpruner: original vs pruned", **styling) as demo:
        # this page's pair, by its key on the shelf: a new page starts with the launched one
        shown = gr.State(launched)
        gr.Markdown("# entpruner: original vs pruned\n"
                    "Both models sample from the same noise (same seed). Timings are measured "
                    "on this machine, one side after the other.")
        status = gr.Markdown(_status(pair), elem_id="status")
        with gr.Tab("Generate"):
            generate = _generate_tab(gr, pair)
        with gr.Tab("Quality"):
            quality = _quality_tab(gr, pair)
        with gr.Tab("Structure"):
            structure = _structure_tab(gr, pair)
        with gr.Accordion("Models", open=bool(pair.errors)):
            models = _models_panel(gr, pair, original, pruned)
        # each page's Stop, which its running Generate or evaluation checks as it goes
        stops: dict[str, threading.Event] = {}
        _on_generate(gr, shelf, shown, generate, stops)
        # the quick evaluation of another pruned model than the launched one uses its report's
        _on_evaluate(gr, shelf, shown, quality,
                     lambda key: data if key[1] == launched[1] else None, stops)
        _on_load(gr, shelf, shown, status, generate, quality, structure, models)
    return demo


def _generate_tab(gr: Any, pair: ModelPair) -> SimpleNamespace:
    """The Generate tab's fields, buttons and the two galleries with their timings."""
    sampling = default_sampling(pair.family)
    backends = list(BACKENDS) if pair.runtimes else ["PyTorch"]
    tab = SimpleNamespace()
    with gr.Row():
        classes = pair.class_choices or [("0", 0)]
        tab.label = gr.Dropdown(choices=classes, value=classes[0][1], label="class",
                                elem_id="class")
        tab.seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
        tab.count = gr.Slider(1, 16, value=DEFAULT_COUNT, step=1, label="number of images")
    with gr.Row():
        tab.sampler = gr.Dropdown(list(OBJECTIVES[pair.family].samplers),
                                  value=sampling["sampler"], label="sampler")
        tab.steps = gr.Slider(1, 250, value=sampling["steps"], step=1, label="steps")
        tab.cfg = gr.Slider(1.0, 10.0, value=sampling["cfg_scale"], step=0.5, label="cfg scale")
        tab.backend = gr.Radio(backends, value="PyTorch", label="backend")
    # the SiT reference's sample.py flags, at its defaults; each sampler takes its own
    reference = FlowMatching(1)
    with gr.Accordion("SiT sampler settings", open=False, visible=pair.family == "sit",
                      elem_id="sit-settings") as tab.sit_settings, gr.Row():
        tab.settings = [
            gr.Dropdown(list(DIFFUSION_FORMS), value=reference.diffusion_form,
                        label="diffusion form (SDE)"),
            gr.Number(reference.diffusion_norm, minimum=0, label="diffusion norm (SDE)"),
            gr.Dropdown(list(LAST_STEPS), value=reference.last_step, label="last step (SDE)"),
            gr.Number(reference.last_step_size, label="last step size (SDE)"),
            gr.Number(reference.atol, label="atol (dopri5)"),
            gr.Number(reference.rtol, label="rtol (dopri5)"),
        ]  # in SETTING_NAMES' order
    with gr.Row():
        tab.button = gr.Button("Generate", variant="primary", elem_id="generate", scale=4)
        tab.stop_button = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
    with gr.Row():
        for side in ("original", "pruned"):
            with gr.Column():
                gr.Markdown(f"### {side}")
                setattr(tab, f"{side}_gallery", gr.Gallery(
                    label=side, columns=4, height="auto", format=GALLERY_FORMAT,
                    show_label=False, elem_id=f"{side}-gallery"))
                setattr(tab, f"{side}_timing", gr.Markdown(elem_id=f"{side}-timing"))
    tab.speedup = gr.Markdown(elem_id="speedup")
    return tab


def _quality_tab(gr: Any, pair: ModelPair) -> SimpleNamespace:
    """The Quality tab: the report's figures and the quick evaluation."""
    tab = SimpleNamespace()
    tab.report_figures = gr.Markdown(_report_figures(pair))
    tab.samples = gr.Slider(20, 500, value=100, step=10,
                            label="samples for the quick evaluation")
    with gr.Row():
        tab.button = gr.Button("Run quick evaluation", elem_id="evaluate", scale=4)
        tab.stop_button = gr.Button("Stop", variant="stop", elem_id="stop-evaluation", scale=1)
    # some text from the start: Gradio shows the running evaluation's bar over this field,
    # and an empty one has no height to show it in
    tab.evaluation = gr.Markdown(NO_EVALUATION, elem_id="evaluation", min_height=80)
    return tab


def _structure_tab(gr: Any, pair: ModelPair) -> SimpleNamespace:
    """The Structure tab: sizes before and after, the two plots and the removals."""
    tab = SimpleNamespace()
    tab.facts = gr.Dataframe(structure_facts(pair), headers=["", "original", "pruned", "ratio"],
                             label="structure")
    with gr.Row():
        # the plots carry their own titles, which a label badge would cover
        tab.importance_plot = gr.Image(_plot(pair, "importance.png"), show_label=False,
                                       label="importance per block (removed blocks marked)")
        tab.timeline_plot = gr.Image(_plot(pair, "loss.png"), show_label=False,
                                     label="pruning timeline: loss and removal events")
    tab.decisions = gr.Markdown(_decisions(pair))
    return tab


def _models_panel(gr: Any, pair: ModelPair, original: str | None, pruned: str
                  ) -> SimpleNamespace:
    """The two model boxes and Load."""
    panel = SimpleNamespace()
    with gr.Row():
        panel.original_path = gr.Textbox(pair.original_source or original,
                                         label="original (teacher name or path; empty: the "
                                               "one the pruned model was made from)")
        panel.pruned_path = gr.Textbox(pruned, label="pruned (compress output or model)")
    panel.button = gr.Button("Load", elem_id="load")
    return panel


def _stop_flag(stops: dict[str, threading.Event], request: Any) -> threading.Event:
    """The page's stop flag, cleared: set by its Stop while the work it starts runs."""
    stop = stops.setdefault(request.session_hash, threading.Event())
    stop.clear()
    return stop


def _stop_button(gr: Any, button: Any, stops: dict[str, threading.Event], api_name: str
                 ) -> None:
    """``button`` sets the page's stop flag, at once (outside the queue)."""

    def on_stop(request: gr.Request):
        if request.session_hash in stops:
            stops[request.session_hash].set()

    _hand_request(gr, on_stop)
    button.click(on_stop, None, None, queue=False, api_name=api_name)


def _hand_request(gr: Any, handler: Callable) -> None:
    # this module's annotations are strings (``from __future__``) naming Gradio, which is
    # imported with the demo only; Gradio hands a handler the page's request by its type
    handler.__annotations__["request"] = gr.Request


def _on_generate(gr: Any, shelf: PairShelf, shown: Any, tab: SimpleNamespace,
                 stops: dict[str, threading.Event]) -> None:
    """Generate samples the page's pair on both sides; Stop ends it at the next model call."""

    def on_generate(request: gr.Request, key, label, seed, count, sampler, steps, cfg,
                    backend, *values):
        stop = _stop_flag(stops, request)
        try:
            pair = shelf.get(tuple(key))
            chosen = (governed_settings(objective_for(pair.original), sampler,
                                        dict(zip(SETTING_NAMES, values)))
                      if pair.ready else {})
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                left, right = generate_pair(pair, int(label), int(seed or 0), int(count),
                                            sampler, int(steps), float(cfg), backend,
                                            sampler_settings=chosen, stop=stop)
        except Stopped as stopped:  # the galleries keep what they showed
            gr.Info(f"Generate {stopped}.")
            return (gr.skip(),) * 5
        except Exception as error:  # shown in the page, never a stack trace
            raise gr.Error(str(error)) from None
        for message in dict.fromkeys(str(w.message) for w in caught):
            gr.Warning(message)  # an unstable SDE setting, say: the page tells why
        return (_pictures(left.images), _timing(left), _pictures(right.images),
                _timing(right), _speedup(left, right, pair.family, sampler, int(steps),
                                         backend, chosen))

    _hand_request(gr, on_generate)
    tab.button.click(on_generate, [shown, tab.label, tab.seed, tab.count, tab.sampler,
                                   tab.steps, tab.cfg, tab.backend, *tab.settings],
                     [tab.original_gallery, tab.original_timing, tab.pruned_gallery,
                      tab.pruned_timing, tab.speedup], api_name="generate")
    _stop_button(gr, tab.stop_button, stops, "stop")


def _on_evaluate(gr: Any, shelf: PairShelf, shown: Any, tab: SimpleNamespace,
                 data_for: Callable[[PairKey], str | None],
                 stops: dict[str, threading.Event]) -> None:
    """The quick evaluation of the page's pair, on ``data_for(key)`` (None: the report's);
    Stop ends it after the batch it is sampling."""

    # Gradio finds the progress tracker through this default argument.
    def on_evaluate(request: gr.Request, key, samples, progress=gr.Progress()):  # noqa: B008
        stop, key = _stop_flag(stops, request), tuple(key)
        try:
            return _quick_evaluation(shelf.get(key), int(samples), data_for(key), progress,
                                     stop)
        except Stopped as stopped:  # the last figures stay
            gr.Info(f"The quick evaluation {stopped}.")
            return gr.skip()
        except Exception as error:
            raise gr.Error(str(error)) from None

    _hand_request(gr, on_evaluate)
    tab.button.click(on_evaluate, [shown, tab.samples], [tab.evaluation], api_name="evaluate")
    _stop_button(gr, tab.stop_button, stops, "stop_evaluation")


def _on_load(gr: Any, shelf: PairShelf, shown: Any, status: Any, generate: SimpleNamespace,
             quality: SimpleNamespace, structure: SimpleNamespace, models: SimpleNamespace
             ) -> None:
    """Load puts another pair on this page only: its status, tabs, classes and samplers."""

    def on_load(original, pruned):
        original, pruned = _typed_path(original), _typed_path(pruned)
        key = PairShelf.key(original, pruned)
        new = shelf.get(key, reload=True)
        classes = new.class_choices or [("0", 0)]
        # another family brings its own samplers and defaults
        defaults = default_sampling(new.family)
        return (key, _status(new), _report_figures(new), structure_facts(new),
                _plot(new, "importance.png"), _plot(new, "loss.png"), _decisions(new),
                gr.Dropdown(choices=classes, value=classes[0][1]),
                gr.Dropdown(choices=list(OBJECTIVES[new.family].samplers),
                            value=defaults["sampler"]),
                defaults["steps"], defaults["cfg_scale"],
                gr.Accordion(visible=new.family == "sit"),
                new.original_source or original,  # empty: shows the recorded one
                # what the page showed of the pair before is not this pair's
                [], "", [], "", "", NO_EVALUATION)

    models.button.click(
        on_load, [models.original_path, models.pruned_path],
        [shown, status, quality.report_figures, structure.facts, structure.importance_plot,
         structure.timeline_plot, structure.decisions, generate.label, generate.sampler,
         generate.steps, generate.cfg, generate.sit_settings, models.original_path,
         generate.original_gallery, generate.original_timing, generate.pruned_gallery,
         generate.pruned_timing, generate.speedup, quality.evaluation],
        api_name="load")


def _typed_path(text: str | None) -> str:
    """A path as typed or pasted into a box, as a shell would read it: surrounding spaces
    and quotes dropped (a path copied from a terminal or a file manager), ``~`` expanded."""
    text = (text or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return os.path.expanduser(text) if text.startswith("~") else text


def _pictures(images) -> list:
    from PIL import Image

    pictures = [to_picture(image) for image in images]
    factor = max(1, DISPLAY_SIZE // max(images.shape[-2:]))
    if factor == 1:
        return pictures
    return [picture.resize((picture.width * factor, picture.height * factor),
                           Image.Resampling.NEAREST) for picture in pictures]


def _timing(side: SideResult) -> str:
    return (f"latency **{1e3 * side.seconds:.0f} ms** for {len(side.images)} images, "
            f"**{side.images_per_second:.1f} images/s**, {side.model_calls} model calls")


def _speedup(original: SideResult, pruned: SideResult, family: str, sampler: str, steps: int,
             backend: str, settings: dict[str, Any] | None = None) -> str:
    # an adaptive solver may take other steps for each model, and the ratio includes that
    ratio, count = original.seconds / pruned.seconds, len(pruned.images)
    if sampler in OBJECTIVES[family].adaptive_samplers:
        steps_text = (f"{sampler}, adaptive, at most {steps} steps: {original.model_calls} "
                      f"vs {pruned.model_calls} model calls")
    else:
        steps_text = f"{steps} steps"
    if settings:
        # numbers as the CLI prints them, whether Gradio handed over 1 or 1.0
        steps_text += ", " + ", ".join(
            f"{name} {value:g}" if isinstance(value, (int, float)) else f"{name} {value}"
            for name, value in settings.items())
    first = "the original" if original.sampled_first else "the pruned model"
    return (f"**speedup: {ratio:.2f}x** (pruned vs original, {backend}, {count} images, "
            f"{steps_text}; {first} sampled first, the order alternating click by click)")


def _status(pair: ModelPair) -> str:
    if pair.errors:
        return "\n\n".join(f"**Problem:** {error}" for error in pair.errors)
    # named, since each viewer may load another pair from the page
    a, b = pair.original, pair.pruned
    return (f"Loaded: original {a.family.upper()} with {a.depth} blocks "
            f"(`{pair.original_source}`), pruned with {b.depth} blocks, kept {b.kept_blocks} "
            f"(`{pair.pruned_source}`); PyTorch runs on {pair.device} in "
            f"{arithmetic(pair.device)}.")


def _report_figures(pair: ModelPair) -> str:
    if pair.report is None:
        return ("No compression report next to the pruned model (a `compress` output folder "
                "has `report.json`).")
    s = pair.report["summary"]
    lines = ["### From the compression report", "", "| figure | value |", "|---|---|",
             f"| data | {s.get('data')} |", f"| budget | {s.get('budget')} |",
             f"| importance / schedule | {s.get('importance')} / {s.get('schedule')} |",
             f"| fine-tuning steps | {s.get('steps')} |",
             f"| depth | {s.get('depth_before')} -> {s.get('depth_after')} |"]
    latency = s.get("sampling_latency")
    if latency:
        how = f", {latency['arithmetic']}" if "arithmetic" in latency else ""
        lines.append(f"| measured sampling speedup ({latency['device']}{how}, batch "
                     f"{latency['batch']}) | {latency['speedup']:.2f}x{spread(latency)} |")
    return "\n".join(lines + _quality_rows(s))


def _quality_rows(s: dict[str, Any]) -> list[str]:
    """The report's quality figures and likelihood, original -> pruned (fidelity to the
    original, such as PSNR, has the pruned side only)."""
    rows = []
    if "quality_pruned" in s:
        q = s["quality_settings"]
        rows.append(f"| quality measured with | {q['samples']} samples, {q['sampler']} x "
                    f"{q['steps']}, cfg {q['cfg_scale']} |")
        for key, value in s["quality_pruned"].items():
            before = s["quality_original"].get(key)
            shown = f"{value:.4f}" if before is None else f"{before:.4f} -> {value:.4f}"
            rows.append(f"| {key} | {shown} |")
    if "likelihood" in s:
        lik = s["likelihood"]
        rows.append(f"| bits per dimension of {lik['images']} real images (lower is better) | "
                    f"{lik['original_bits_per_dim']['mean']:.4f} -> "
                    f"{lik['bits_per_dim']['mean']:.4f} |")
    return rows


def _decisions(pair: ModelPair) -> str:
    if pair.report is None or not pair.report.get("decisions"):
        return ""
    lines = ["### Pruning timeline", "", "| step | removed (original index) | loss |",
             "|---|---|---|"]
    for d in pair.report["decisions"]:
        if d.get("removed"):
            loss = d.get("loss")
            shown = f"{loss:.4f}" if isinstance(loss, float) else ""
            lines.append(f"| {d.get('step')} | {d.get('removed')} | {shown} |")
    return "\n".join(lines)


def _plot(pair: ModelPair, name: str) -> str | None:
    if pair.report_dir is None or not (pair.report_dir / name).is_file():
        return None
    return str(pair.report_dir / name)


def _quick_evaluation(pair: ModelPair, samples: int, data: str | None, progress: Any,
                      stop: threading.Event | None = None) -> str:
    from entpruner_sdk.data.datasets import open_data
    from entpruner_sdk.evaluation.evaluate import evaluate
    from entpruner_sdk.evaluation.reference import REFERENCE_SIZE, load_reference

    if not pair.ready:
        raise ValueError("load an original and a pruned model first")
    # read once for both models; of a folder only the reference images
    dataset, _ = load_reference(open_data(data or _data_name(pair),
                                          **({} if data else _data_options(pair))),
                                REFERENCE_SIZE)
    settings = default_sampling(pair.family)
    progress(0.02, desc=f"sampling {samples} images from each model, from the same noise")

    made = {"pruned": 0, "original": 0}

    def on_batch(side: str, done: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped after {done} of {total} batches of the {side} model")
        # the two models sample batch by batch in turn: the bar counts the batches of both
        made[side] = done
        progress(0.02 + 0.9 * sum(made.values()) / (2 * total),
                 desc=f"sampling the {side} model: batch {done} of {total}")

    # one evaluation: the original's figures come from the samples its fidelity needs; five
    # batches a model, so the bar moves and Stop takes effect between them
    pruned = ModelThread.run(evaluate, pair.pruned, dataset, samples=samples,
                             original=pair.original, features=("domain",), device=pair.device,
                             progress=False, vae=pair.decoder, model_name="pruned",
                             batch_size=-(-samples // QUICK_BATCHES), on_batch=on_batch,
                             **settings)
    progress(1.0, desc="done")
    rows = ["| | original | pruned |", "|---|---|---|"]
    for key in ("fd_domain", "class_accuracy", "precision_domain", "recall_domain"):
        rows.append(f"| {key} | {pruned.original_metrics[key]:.4f} | "
                    f"{pruned.metrics[key]:.4f} |")
    for key, value in pruned.fidelity.items():
        rows.append(f"| fidelity to original: {key} | | {value:.4f} |")
    timing = pruned.settings  # both sampled in this evaluation, batch by batch in turn
    rows.append(f"| sampling seconds, batch by batch in turn | "
                f"{timing['original_sampling_seconds']:.2f} | "
                f"{timing['sampling_seconds']:.2f} ({timing['sampling_speedup']:.2f}x as "
                "fast) |")
    return (f"### Quick evaluation on `{data or _data_name(pair)}` ({samples} samples, "
            f"{settings['sampler']} x {settings['steps']}, cfg {settings['cfg_scale']})\n\n"
            + "\n".join(rows) + "\n\nFD-domain is a Fréchet distance in the features of a "
            "small classifier trained on the data (not comparable with standard FID).")


def _recorded_data(pair: ModelPair) -> tuple[str, dict] | None:
    return recorded_data(pair.report["summary"] if pair.report is not None else None)


def _data_options(pair: ModelPair) -> dict:
    """The ``load_data`` keywords the compress run loaded its data with (split, image size)."""
    recorded = _recorded_data(pair)
    return recorded[1] if recorded is not None else {}


def _data_name(pair: ModelPair) -> str:
    recorded = _recorded_data(pair)
    if recorded is not None:  # the bundled name or path the compress run loaded
        return recorded[0]
    if pair.report is not None:
        name = str(pair.report["summary"].get("data", ""))
        base, _, split = name.rpartition("-")
        if split in ("train", "test") and base:
            return base
        if name:
            return name
    return "digits" if pair.original.config.input_size == 8 else "photos"


def launch(original: str | None = None, pruned: str = DEFAULT_PRUNED, *,
           port: int = 7860, host: str = "127.0.0.1", onnx: bool = False,
           data: str | None = None, share: bool = False, block: bool = True,
           vae: str | None = None, family: str | None = None, device: str | None = None,
           notify: Callable[[str], None] | None = None,
           auth: tuple[str, str] | None = None) -> gr.Blocks:
    """Build and start the demo server on ``host:port``; ``block=False`` returns at once
    with the app running (``.close()`` stops it). ``notify``: as for :func:`build_demo`.
    ``auth``: (user, password) that the page asks for; a demo other machines can reach
    without one is warned about, since its Models panel opens any model path here."""
    check_address(host, port)  # before the models load, not after
    check_exposure(host, auth)
    demo = build_demo(original, pruned, onnx, data, vae, family, device, notify)
    demo.queue(default_concurrency_limit=1)  # one model thread; requests take turns
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                show_error=True, auth=auth, **launch_styling())
    return demo


def launch_styling() -> dict[str, str]:
    """The demo's styling as ``launch`` takes it: Gradio 6 moved ``css`` from ``gr.Blocks``
    to ``launch``, and Gradio 5 (which the app extra allows) has it in ``gr.Blocks`` only,
    where :func:`build_demo` puts it."""
    return {"css": DEMO_CSS} if _styled_at_launch() else {}


def _styled_at_launch() -> bool:
    import gradio as gr

    return "css" in inspect.signature(gr.Blocks.launch).parameters


def check_exposure(host: str, auth: tuple[str, str] | None) -> None:
    """Warn when other machines can reach the demo without a password."""
    if auth is None and not is_loopback(host):
        warnings.warn(f"the demo on {host} asks for no password: anyone who can reach this "
                      "address can sample on this machine and open any model path on it from "
                      "the Models panel; set --auth USER:PASSWORD or ENTPRUNER_DEMO_AUTH "
                      "(auth= in Python)", stacklevel=2)


__all__ = ["build_demo", "check_exposure", "launch"]
