"""Compare adapters (ctrl+g): the prompt on the base model and on every adapter the app can use, one seed, one batch;
each draft equals the single draft of its adapter at that seed. The real engine on the demo model, with adapters of
tests/fixtures.py in an adapters folder, and the fake engine for the batch it is sent as and the messages."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fake_engine import FakeEngine, fake_loader
from fixtures import write_adapter
from test_app_support import generate, generate_new, notes, run_async, wait_until

from bobby_tui.app import BobbyApp
from bobby_tui.config import MAX_SPREAD, Config, PostProcess, Sampling
from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR
from bobby_tui.paths import db_path
from bobby_tui.storage import Store

SIZE = (120, 40)
PROMPT = "Write a post about the sea"
SEED = 1234


@pytest.fixture(autouse=True)
def one_seed(monkeypatch):
    """Every run draws this seed: a comparison's drafts and the single drafts checked against them share it."""
    monkeypatch.setattr(random, "randrange", lambda stop: SEED)


@pytest.fixture(scope="module")
def adapters_folder(tmp_path_factory) -> Path:
    """Two more adapters for the demo model, as mlx_lm saves them, and a subfolder that is no adapter."""
    folder = tmp_path_factory.mktemp("adapters")
    for seed, name in enumerate(("v1", "v2"), start=2):
        write_adapter(folder / name, DEMO_MODEL_DIR, seed=seed)
    (folder / "notes").mkdir()
    return folder


def quick_config(**settings) -> Config:
    return Config(sampling=Sampling(max_tokens=32), postprocess=PostProcess(min_length=0), **settings)


def stored() -> list:
    with Store(db_path()) as store:
        return store.history(limit=-1)


def header(card) -> str:
    return str(card.query_one(".draft-header").render())


async def single_draft(pilot) -> str:
    await generate(pilot)
    (card,) = pilot.app.screen.drafts.cards
    return card.text


@run_async
async def test_compare_drafts_base_and_each_adapter_on_one_seed_each_as_its_single_draft(adapters_folder):
    app = BobbyApp(quick_config(adapters_dir=adapters_folder), DEMO_MODEL_DIR, DEMO_ADAPTER_DIR)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await pilot.press(*PROMPT)
        cards = await generate_new(pilot, "ctrl+g")
        labels = ["base", "adapter demo adapter", "adapter v1", "adapter v2"]
        assert [card.adapter for card in cards] == labels
        (warning,) = notes(app, "warning")  # the folder that is no adapter, in one line
        assert str(adapters_folder / "notes") in warning and "\n" not in warning
        assert all(label in header(card) for label, card in zip(labels, cards, strict=True))
        assert {card.seed for card in cards} == {SEED} and {card.temperature for card in cards} == {screen.temperature}
        texts = [card.text for card in cards]
        assert all(text.strip() for text in texts) and len(set(texts)) == len(texts)  # each adapter changes the text
        assert sorted(r.adapter or "" for r in stored()) == ["", "adapter", "v1", "v2"]
        assert {r.seed for r in stored()} == {SEED}
        assert screen.adapter_name == "demo adapter" and screen.adapter_enabled  # comparing switched nothing

        rerun = await generate_new(pilot, "ctrl+r")  # a rerun of a comparison compares again
        assert [card.adapter for card in rerun] == labels and [card.text for card in rerun] == texts

        # the same seed, one draft at a time, as the adapter switch and the palette's adapters pick them
        assert await single_draft(pilot) == texts[1]
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: not screen.adapter_enabled)
        assert await single_draft(pilot) == texts[0]
        for name, text in zip(("v1", "v2"), texts[2:], strict=True):
            screen.choose_adapter(name)
            await wait_until(pilot, lambda name=name: screen.adapter_name == name and screen.adapter_enabled)
            assert await single_draft(pilot) == text
    singles = stored()[:4]  # newest first
    assert [(r.adapter, r.text) for r in singles] == [("v2", texts[3]), ("v1", texts[2]), (None, texts[0]),
                                                      ("adapter", texts[1])]


@run_async
async def test_compare_is_one_batch_and_a_folder_that_does_not_load_is_left_out_with_a_warning(tmp_path):
    folder = tmp_path / "adapters"
    for name in ("broken", "lora-sea"):  # the fake engine loads the lora-* ones only
        (folder / name).mkdir(parents=True)
    engine = FakeEngine()
    app = BobbyApp(quick_config(adapters_dir=folder), Path("/models/demo"), Path("/models/fake-lora"),
                   loader=fake_loader(engine))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press(*PROMPT)
        cards = await generate_new(pilot, "ctrl+g")
        assert [card.adapter for card in cards] == ["base", "adapter fake-lora", "adapter lora-sea"]
        (request,) = engine.requests
        assert request.adapters == (None, "fake-lora", "lora-sea")
        assert {params.seed for params in request.drafts} == {SEED}
        (warning,) = notes(app, "warning")
        assert str(folder / "broken") in warning
    assert sorted(r.adapter or "" for r in stored()) == ["", "fake-lora", "lora-sea"]


@run_async
async def test_a_compared_draft_is_refined_with_the_adapter_that_wrote_it(tmp_path):
    folder = tmp_path / "adapters"
    (folder / "lora-sea").mkdir(parents=True)
    engine = FakeEngine()
    app = BobbyApp(quick_config(adapters_dir=folder), Path("/models/demo"), Path("/models/fake-lora"),
                   loader=fake_loader(engine))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await pilot.press(*PROMPT)
        cards = await generate_new(pilot, "ctrl+g")
        while screen.drafts.selected is not cards[2]:  # the draft of lora-sea, not the switched-on fake-lora
            await pilot.press("ctrl+down")
        screen.editor.text = ""
        await pilot.press(*"make it shorter")
        await generate(pilot, "ctrl+n")
        assert engine.requests[-1].adapters == ("lora-sea",)
        assert [card.adapter for card in screen.drafts.cards] == ["adapter lora-sea"]
        await generate(pilot, "ctrl+f")  # its refinement refined again, as a spread: still lora-sea
        assert engine.requests[-1].adapters == ("lora-sea",) * len(screen.drafts.cards)
        assert len(screen.drafts.cards) > 1
        await pilot.press("f5")  # a fresh prompt runs with the switched-on adapter again
        await wait_until(pilot, lambda: screen.job is None and len(engine.requests) == 4)
        assert engine.requests[-1].adapters is None
    # the refinement, its spread of three, then the fresh prompt (the editor still holds the instruction)
    rows = [r.adapter for r in stored() if r.prompt == "make it shorter"]
    assert sorted(rows) == ["fake-lora"] + ["lora-sea"] * 4, rows


@run_async
async def test_compare_with_the_base_model_alone_is_one_message(tmp_path):
    app = BobbyApp(quick_config(adapters_dir=tmp_path / "no-such-folder"), Path("/models/demo"), None,
                   loader=fake_loader(FakeEngine(adapter_name="")))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.state == "ready")
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: notes(app))
        await pilot.pause()
        assert notes(app) == ["Nothing to compare: only the base model (no adapter is loaded, and the config's "
                              "adapters_dir has none that loads)."]
        assert screen.drafts.cards == [] and screen.job is None
    assert stored() == []


@run_async
async def test_compare_takes_the_base_model_and_as_many_adapters_as_a_spread_holds(tmp_path):
    folder = tmp_path / "adapters"
    names = [f"lora-{i:02d}" for i in range(MAX_SPREAD + 2)]
    for name in names:
        (folder / name).mkdir(parents=True)
    engine = FakeEngine(adapter_name="")
    app = BobbyApp(quick_config(adapters_dir=folder), Path("/models/demo"), None, loader=fake_loader(engine))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press(*PROMPT)
        cards = await generate_new(pilot, "ctrl+g")
        assert len(cards) == MAX_SPREAD
        assert engine.requests[0].adapters == (None, *names[: MAX_SPREAD - 1])
        (warning,) = notes(app, "warning")
        assert f"{len(names)} adapters: comparing the first {MAX_SPREAD - 1}" in warning
