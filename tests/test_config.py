import os
import stat
from pathlib import Path

import pytest
import tomllib

from bobby_tui import paths
from bobby_tui.config import (
    Config,
    ConfigError,
    Persona,
    adapter_names,
    load_config,
    resolve_adapter,
    resolve_model,
    save_setting,
)
from inference.api import SAMPLING_LIMITS


def test_paths_follow_xdg(isolated_user_dirs):
    assert paths.config_path() == isolated_user_dirs / "xdg-config" / "bobby-tui" / "config.toml"
    assert paths.db_path() == isolated_user_dirs / "xdg-data" / "bobby-tui" / "history.sqlite3"


def test_missing_file_gives_defaults_without_warning():
    config, warning = load_config()
    assert warning is None
    assert config == Config()
    assert (config.sampling.temperature, config.sampling.top_p, config.sampling.max_tokens) == (0.95, 0.9, 280)
    assert config.postprocess.min_length == 80


def test_values_are_read(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'model = "~/models/qwen"\nadapter = "adapters/mine"\ntheme = "bobby-light"\npost_limit = 500\n'
        "[sampling]\ntemperature = 1\ntop_k = 40\nspread = [0.5, 1]\n"
        "[postprocess]\nstrip_emoji = true\nretries = 0\n"
        '[keys]\ngenerate = "ctrl+g"\n'
    )
    config, warning = load_config(path)
    assert warning is None
    assert config.model == Path.home() / "models" / "qwen"
    assert config.adapter == tmp_path / "adapters" / "mine"  # relative to the config file
    assert (config.theme, config.post_limit) == ("bobby-light", 500)
    assert config.sampling.temperature == 1.0 and isinstance(config.sampling.temperature, float)
    assert (config.sampling.top_k, config.sampling.spread) == (40, [0.5, 1.0])
    assert config.sampling.top_p == 0.9  # untouched default
    assert (config.postprocess.strip_emoji, config.postprocess.retries) == (True, 0)
    assert config.keys == {"generate": "ctrl+g"}


def test_malformed_file_names_line_and_column_and_gives_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('theme = "bobby-light"\n\npost_limit 300\n')
    config, warning = load_config(path)
    assert config == Config()
    assert warning.startswith(f"{path}:3:12: ")
    assert "\n" not in warning


def test_unterminated_file_still_gives_a_location(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('theme = "bobby-light')
    config, warning = load_config(path)
    assert config == Config()
    assert warning.startswith(f"{path}:1:") and "\n" not in warning


def test_unknown_keys_and_wrong_types_warn_by_name_and_keep_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'colour = "red"\npost_limit = "long"\nuse_adapter = 1\n'
        "[sampling]\ntemperature = true\ntop_p = 1.5\nmax_tokens = 2.5\nbogus = 1\n"
        '[postprocess]\ntrim = "yes"\n'
    )
    config, warning = load_config(path)
    assert config == Config()
    for name in ["colour", "post_limit", "use_adapter", "sampling.temperature", "sampling.top_p",
                 "sampling.max_tokens", "sampling.bogus", "postprocess.trim"]:
        assert f"'{name}'" in warning
    assert warning.startswith(str(path)) and "\n" not in warning


def test_table_given_as_value_warns(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("sampling = 3\ntheme = \"x\"\n")
    config, warning = load_config(path)
    assert "'sampling' must be a table" in warning
    assert config.theme == "x"


def test_save_setting_creates_the_file_and_round_trips():
    save_setting("theme", "bobby-light")
    save_setting("sampling.temperature", 0.7)
    save_setting("model", Path("/models/q"))
    config, warning = load_config()
    assert warning is None
    assert (config.theme, config.sampling.temperature, config.model) == ("bobby-light", 0.7, Path("/models/q"))


def test_save_setting_keeps_comments_and_other_lines(tmp_path):
    path = tmp_path / "config.toml"
    original = (
        "# my settings\n"
        'theme = "bobby-dark"   # the dark one\n'
        'default_prompt = """multi\nline [not a table]\n"""\n'
        "\n"
        "# sampling below\n"
        "[sampling]\n"
        "temperature = 0.8 # warm\n"
        "\n"
        "# the end\n"
    )
    path.write_text(original)
    save_setting("theme", 'say "hi"', path)
    save_setting("default_prompt", "one line", path)
    save_setting("post_limit", 140, path)
    save_setting("sampling.temperature", 1.1, path)
    save_setting("sampling.top_k", 20, path)
    save_setting("postprocess.strip_emoji", True, path)
    text = path.read_text()
    assert text == (
        "# my settings\n"
        'theme = "say \\"hi\\""   # the dark one\n'
        'default_prompt = "one line"\n'
        "post_limit = 140\n"
        "\n"
        "# sampling below\n"
        "[sampling]\n"
        "temperature = 1.1 # warm\n"
        "top_k = 20\n"
        "\n"
        "# the end\n"
        "\n"
        "[postprocess]\n"
        "strip_emoji = true\n"
    )
    config, warning = load_config(path)
    assert warning is None
    assert (config.theme, config.sampling.top_k, config.postprocess.strip_emoji) == ('say "hi"', 20, True)


def test_save_setting_none_removes_the_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "/m"\ntheme = "x"\n')
    save_setting("model", None, path)
    assert path.read_text() == 'theme = "x"\n'


def test_save_setting_refuses_a_malformed_file_and_leaves_it(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("theme = \n# keep me\n")
    with pytest.raises(ConfigError, match=r":1:\d+: "):
        save_setting("theme", "x", path)
    assert path.read_text() == "theme = \n# keep me\n"


def test_saved_strings_with_odd_characters_parse_back(tmp_path):
    path = tmp_path / "config.toml"
    value = 'tab\there "quote" back\\slash\nnewline \x07 é'
    save_setting("system_prompt", value, path)
    assert tomllib.loads(path.read_text())["system_prompt"] == value


def test_resolve_model_prefers_command_line_then_config():
    config = Config(model=Path("/cfg/model"), adapter=Path("/cfg/adapter"))
    assert resolve_model(config, None, None, False) == (Path("/cfg/model"), Path("/cfg/adapter"), False)
    assert resolve_model(config, None, None, True) == (Path("/cfg/model"), None, False)
    assert resolve_model(config, Path("/cli/m"), None, False) == (Path("/cli/m"), None, False)
    assert resolve_model(config, Path("/cli/m"), Path("/cli/a"), False) == (Path("/cli/m"), Path("/cli/a"), False)
    config.use_adapter = False
    assert resolve_model(config, None, None, False) == (Path("/cfg/model"), None, False)
    assert resolve_model(config, None, Path("/cli/a"), False) == (Path("/cfg/model"), Path("/cli/a"), False)


def test_resolve_model_falls_back_to_the_demo():
    demo = pytest.importorskip("bobby_tui.demo")
    assert resolve_model(Config(), None, None, False) == (demo.DEMO_MODEL_DIR, demo.DEMO_ADAPTER_DIR, True)
    assert resolve_model(Config(), None, None, True) == (demo.DEMO_MODEL_DIR, None, True)


def test_sampling_ranges_are_the_engines(tmp_path):
    path = tmp_path / "config.toml"
    too_hot = SAMPLING_LIMITS["temperature"].high + 1
    path.write_text(
        f"[sampling]\ntemperature = {too_hot}\ntop_p = 0.0\nrepetition_penalty = 0\nspread = [0.5, {too_hot}]\n"
    )
    config, warning = load_config(path)
    assert config.sampling == Config().sampling
    for name in ("sampling.temperature", "sampling.top_p", "sampling.repetition_penalty", "sampling.spread"):
        assert f"'{name}'" in warning
    assert f"got {too_hot}" in warning and "(0, 1]" in warning  # top_p's range as the engine states it


def test_save_setting_writes_through_a_symlink_and_keeps_the_mode(tmp_path):
    real = tmp_path / "dotfiles" / "bobby.toml"
    real.parent.mkdir()
    real.write_text("# managed in my dotfiles\ntheme = \"bobby-dark\"\n")
    real.chmod(0o600)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    save_setting("theme", "bobby-light", link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert real.read_text() == "# managed in my dotfiles\ntheme = \"bobby-light\"\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(os.listdir(real.parent)) == ["bobby.toml"]  # no temporary file left behind


def test_save_setting_never_edits_inside_a_multi_line_string(tmp_path):
    path = tmp_path / "config.toml"
    prompt = 'Notes:\ntheme = "inside the prompt"\n[sampling]\ntemperature = 5\n'
    path.write_text(f'system_prompt = """{prompt}"""\n\n[sampling]\ntemperature = 0.8\n')
    save_setting("theme", "bobby-light", path)
    save_setting("sampling.temperature", 1.2, path)
    data = tomllib.loads(path.read_text())
    assert data == {"system_prompt": prompt, "theme": "bobby-light", "sampling": {"temperature": 1.2}}
    assert path.read_text().startswith(f'system_prompt = """{prompt}"""\n')


def test_save_setting_through_a_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "config.toml"
    loop.symlink_to(tmp_path / "other.toml")
    (tmp_path / "other.toml").symlink_to(loop)
    with pytest.raises(ConfigError) as info:
        save_setting("theme", "x", loop)
    assert str(info.value).startswith(str(loop)) and "\n" not in str(info.value)


def test_concurrent_saves_each_use_their_own_temporary_file(tmp_path):
    import threading

    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    errors = []

    def save(i):
        try:
            for _ in range(20):
                save_setting("sampling.top_k", i, path)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # with one shared temporary name, a writer would find its file renamed away by another
    assert tomllib.loads(path.read_text())["sampling"]["top_k"] in range(4)
    assert path.read_text().startswith("# mine\n") and sorted(os.listdir(tmp_path)) == ["config.toml"]


# --- personas, adapters_dir, models_dir -----------------------------------------------------------------


def _adapter_dirs(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
    return root


def test_personas_are_read_and_applied_over_the_defaults(tmp_path):
    _adapter_dirs(tmp_path / "adapters", "v5", "v1")
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(
        'adapters_dir = "adapters"\nmodels_dir = "~/models"\npersona = "terse"\nsystem_prompt = "Be kind."\n'
        '[sampling]\ntemperature = 0.5\n'
        '[personas.terse]\nsystem_prompt = "Be terse."\ntemperature = 0.2\ntop_k = 20\nmax_tokens = 40\n'
        'adapter = "v5"\npost_limit = 120\n'
        '[personas.base]\nadapter = ""\n'
        '[personas.other]\nadapter = "elsewhere"\n'
        '[personas.pathed]\nadapter = "./elsewhere"\n'
    )
    config, warning = load_config(path)
    assert warning is None
    assert config.adapters_dir == tmp_path / "adapters" and config.models_dir == Path.home() / "models"
    assert config.persona == "terse" and set(config.personas) == {"terse", "base", "other", "pathed"}
    assert config.personas["terse"] == Persona("terse", system_prompt="Be terse.", temperature=0.2, top_k=20,
                                               max_tokens=40, adapter="v5", post_limit=120)
    assert config.personas["pathed"].adapter == str(tmp_path / "elsewhere")  # relative to the config file

    terse = config.with_persona(None)  # the configured persona
    assert terse.persona == "terse"
    assert (terse.system_prompt, terse.post_limit, terse.adapter, terse.use_adapter) == (
        "Be terse.", 120, tmp_path / "adapters" / "v5", True)
    assert (terse.sampling.temperature, terse.sampling.top_k, terse.sampling.max_tokens) == (0.2, 20, 40)
    assert terse.sampling.top_p == 0.9  # not set by the persona: the config's
    assert config.system_prompt == "Be kind." and config.sampling.temperature == 0.5  # the original is unchanged

    base = config.with_persona("base")
    assert (base.persona, base.use_adapter, base.system_prompt, base.sampling.temperature) == (
        "base", False, "Be kind.", 0.5)
    assert config.with_persona("pathed").adapter == tmp_path / "elsewhere"


def test_an_unknown_persona_is_one_line_listing_the_known_ones(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[personas.zippy]\ntemperature = 1\n[personas.alice]\ntop_p = 0.5\n')
    config, _ = load_config(path)
    with pytest.raises(ConfigError, match=r"^unknown persona 'bob' \(known: alice, zippy\)$"):
        config.with_persona("bob")
    with pytest.raises(ConfigError, match=r"known: none in the config"):
        Config().with_persona("bob")
    assert Config().with_persona(None) == Config()


def test_bad_persona_keys_warn_one_each_and_keep_the_default(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        'persona = "ghost"\n'
        '[personas.bad]\ntemperature = -1\ntop_p = "high"\nmax_tokens = 0\nadapter = 3\nname = "x"\ncolour = 1\n'
        'post_limit = 50\n'
        '[personas]\nflat = 3\n'
    )
    config, warning = load_config(path)
    assert "\n" not in warning and warning.startswith(str(path))
    for name in ["personas.bad.temperature", "personas.bad.top_p", "personas.bad.max_tokens", "personas.bad.adapter",
                 "personas.bad.name", "personas.bad.colour", "personas.flat", "persona"]:
        assert f"'{name}'" in warning, name
    assert config.persona is None  # ghost has no table
    assert config.personas["bad"] == Persona("bad", post_limit=50)
    applied = config.with_persona("bad")
    assert applied.sampling == Config().sampling and applied.post_limit == 50


def test_temperature_limit_of_personas_is_the_engines(tmp_path):
    path = tmp_path / "config.toml"
    high = SAMPLING_LIMITS["temperature"].high
    path.write_text(f"[personas.hot]\ntemperature = {high}\n[personas.hotter]\ntemperature = {high + 1}\n")
    config, warning = load_config(path)
    assert config.personas["hot"].temperature == high
    assert "'personas.hotter.temperature'" in warning and config.personas["hotter"].temperature is None


def test_resolve_adapter_takes_a_name_in_adapters_dir_then_a_path(tmp_path, monkeypatch):
    root = _adapter_dirs(tmp_path / "adapters", "v1", "v2")
    (tmp_path / "cwd" / "v2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    config = Config(adapters_dir=root)
    assert resolve_adapter(config, "v1") == root / "v1"
    assert resolve_adapter(config, "v2") == root / "v2"  # the adapters folder first
    assert resolve_adapter(config, "./v2") == Path("./v2")
    assert resolve_adapter(config, tmp_path / "adapters" / "v1") == root / "v1"
    with pytest.raises(ConfigError, match=rf"^adapter 'v9': not an adapter in {root} and not a directory$"):
        resolve_adapter(config, "v9")
    with pytest.raises(ConfigError, match=r"^adapter 'v1': not a directory$"):
        resolve_adapter(Config(), "v1")
    with pytest.raises(ConfigError, match="not a directory"):
        Config(adapters_dir=root, personas={"p": Persona("p", adapter="gone")}).with_persona("p")
    (root / ".hidden").mkdir()
    (root / "notes.txt").write_text("not an adapter")
    assert adapter_names(root) == ["v1", "v2"] and adapter_names(None) == [] and adapter_names(tmp_path / "no") == []
