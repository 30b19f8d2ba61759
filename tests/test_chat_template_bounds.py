"""Chat templates come from downloaded files: one that would run forever or build gigabytes fails fast, in one line.

The hostile templates render in a child process whose address space may grow by at most 1 GiB past what it has after
start-up (RLIMIT_AS), so a template that escaped the bounds would die there rather than take the machine with it.
Each must fail in under 2 s with "chat template exceeded ..." and not by running out of that memory.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from inference import TokenizerError
from inference.tokenizer import Tokenizer, check_tokenizer

DOS_TEMPLATES = {
    "string-repeat": "{{ 'a' * 10**9 }}",
    "list-repeat": "{{ [0] * 10**9 }}",
    "huge-power": "{{ 10 ** (10 ** 8) }}",
    "power-tower": "{% set ns = namespace(x=7) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "huge-range": "{% for i in range(10**9) %}{% endfor %}",
    "range-join": "{{ range(10**9)|join(',') }}",
    "nested-loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested-loops-output": "{% for i in range(100000) %}{% for j in range(100000) %}ab{% endfor %}{% endfor %}",
    "loop-filter": "{% for i in range(100000) %}{% for j in range(100000) if j < 0 %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(10**6) }}",
    "lipsum-loop": "{% for i in range(100000) %}{{ lipsum(5) }}{% endfor %}",
    "join-of-repeats": "{% set s = 'x' * 100000 %}{{ ([s] * 100000)|join }}",
    "str-join-of-repeats": "{% set s = 'x' * 100000 %}{{ ''.join([s] * 100000) }}",
    "concat-doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}",
    "plus-doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "list-doubling": "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
    "nested-list-text": "{% set ns = namespace(x=['a' * 1000]) %}{% for i in range(60) %}{% set ns.x = [ns.x, ns.x] %}"
                        "{% endfor %}{{ ns.x }}",
    "nested-list-string-filter": "{% set ns = namespace(x=['a' * 1000]) %}{% for i in range(60) %}"
                                 "{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x|string|length }}",
    "quadratic-append": "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'x' * 1000 %}"
                        "{% endfor %}",
    "slice-copies": "{% set b = range(100000)|list %}{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                    "{% set ns.l = [b[:], ns.l] %}{% endfor %}",
    "center-filter": "{{ 'a'|center(10**9) }}",
    "center-method": "{{ 'a'.center(10**9) }}",
    "ljust-method": "{{ 'a'.ljust(10**9) }}",
    "to-bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "printf-width": "{{ '%0999999999d' % 1 }}",
    "printf-star": "{{ '%*d' % (999999999, 1) }}",
    "printf-many-fields": "{% set s = 'x' * 100000 %}{{ ('%s' * 1000) % ([s] * 1000)|list|batch(1000)|first|list }}",
    "format-filter": "{{ '%999999999s'|format('a') }}",
    "format-method": "{{ '{:>999999999}'.format(1) }}",
    "format-nested-width": "{{ '{:{w}}'.format(1, w=999999999) }}",
    "indent-lines": "{{ ('\\n' * 100000)|indent(100000) }}",
    "replace-filter": "{{ ('a' * 100000)|replace('a', 'a' * 100000) }}",
    "replace-method": "{{ ('a' * 100000).replace('a', 'a' * 100000) }}",
    "expandtabs": "{{ ('\\t' * 100000).expandtabs(100000) }}",
    "wordwrap": "{{ ('a ' * 400000)|wordwrap(1, wrapstring='-' * 1000) }}",
    "batch-fill": "{{ [1]|batch(10**9, 0)|list }}",
    "tojson-indent": "{{ ([[1] * 1000] * 1000)|tojson(indent=100000) }}",
    "sum-of-lists": "{{ ([[0] * 100000] * 1000)|sum(start=[]) }}",
    "groupby-huge": "{{ ([0] * 1000000)|groupby('real')|list }}",
    "sort-huge": "{{ ([0] * 1000000)|sort|list|length }}",
    "pprint-huge": "{{ (range(100000)|list * 10)|pprint }}",
    "title-huge": "{{ ('a-' * 500000)|title }}",
    "attribute-per-item": "{% for i in range(100000) %}{{ range(100000)|map(attribute='real')|list|length }}"
                          "{% endfor %}",
    "macro-fanout": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "macro-recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "recursive-loop": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "set-block": "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set x %}{% for j in range(1000) %}"
                 "abcdefgh{% endfor %}{% endset %}{% set ns.s = ns.s ~ x %}{% endfor %}",
}

CHILD = """
import json, resource, sys, time
from pathlib import Path
from inference import TokenizerError
from inference.tokenizer import Tokenizer

base = Path(sys.argv[1])
first = Tokenizer(base / "0")  # imports done, one tokenizer built: what a running engine already has
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))
results = {}
for name in json.loads(sys.argv[2]):
    start = time.monotonic()
    try:
        Tokenizer(base / name).apply_chat_template([{"role": "user", "content": "hi"}])
        outcome = "rendered"
    except TokenizerError as e:
        outcome = str(e)
    except BaseException as e:
        outcome = f"UNEXPECTED {type(e).__name__}: {e}"
    results[name] = (outcome, time.monotonic() - start)
print(json.dumps(results))
"""


def write_model(directory, template):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    directory.mkdir(parents=True)
    vocabulary = models.WordLevel({"<|im_end|>": 0, "[UNK]": 1}, unk_token="[UNK]")
    HFTokenizer(vocabulary).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    return directory


@pytest.fixture(scope="module")
def dos_results(tmp_path_factory):
    base = tmp_path_factory.mktemp("dos")
    write_model(base / "0", "{{ messages[0].content }}")
    for name, template in DOS_TEMPLATES.items():
        write_model(base / name, template)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run([sys.executable, "-c", CHILD, str(base), json.dumps(list(DOS_TEMPLATES))], check=False,
                           cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    return base, json.loads(child.stdout)


@pytest.mark.parametrize("name", DOS_TEMPLATES)
def test_hostile_template_fails_fast_in_one_line(dos_results, name):
    base, results = dos_results
    message, seconds = results[name]
    assert message.startswith(f"{base / name / 'tokenizer_config.json'}: chat template exceeded its "), message
    assert "\n" not in message
    assert seconds < 2.0, f"{name} took {seconds:.2f} s"



def test_limits_hold_at_load_too(tmp_path):
    """inspect (and the engine's warm-up) render the template: the same bounds apply there."""
    model = write_model(tmp_path / "m", DOS_TEMPLATES["nested-loops"])
    problems = check_tokenizer(model)
    assert len(problems) == 1 and "chat template exceeded its time limit" in problems[0]


def test_templates_within_bounds_render(tmp_path):
    """The bounds stop runaway templates, not real ones: loops, macros, joins, formatting of modest size render."""
    template = textwrap.dedent("""\
        {%- macro wrap(text) %}[{{ text }}]{% endmacro -%}
        {%- set ns = namespace(total=0) -%}
        {%- for i in range(1000) %}{% set ns.total = ns.total + i %}{% endfor -%}
        {{ ns.total }} {{ 2 ** 100 }} {{ range(5)|join(',') }} {{ '%05d' % 42 }} {{ '{:>6}'.format('x') }}
        {{- ' ' ~ wrap(messages[0].content) ~ ' ' ~ ('ab' * 3)|replace('b', 'c') ~ ' ' ~ messages|tojson }}
        {{- ' ' ~ 'x'|center(7) ~ '|' ~ ('a\\nb'|indent(2)) ~ '|' }}
        {{- [1, [2, 3]] ~ ' ' ~ messages[0].get('n', 5000000) }}""")
    tokenizer = Tokenizer(write_model(tmp_path / "m", template))
    messages = [{"role": "user", "content": "hi ü"}]
    expected = ("499500 1267650600228229401496703205376 0,1,2,3,4 00042      x [hi ü] acacac "
                '[{"role": "user", "content": "hi ü"}]    x   |a\n  b|[1, [2, 3]] 5000000')
    assert tokenizer.apply_chat_template(messages) == expected


def test_a_long_prompt_is_not_mistaken_for_a_runaway_template(tmp_path):
    from fixtures import QWEN_TOKENIZER_DIR

    tokenizer = Tokenizer(QWEN_TOKENIZER_DIR)
    content = "word " * 100_000  # 500 KB, more than any prompt a context window holds
    assert content in tokenizer.apply_chat_template([{"role": "user", "content": content}])


SSTI_PAYLOADS = {
    "mro-subclasses": "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "str-base": "{{ ''.__class__.__base__.__subclasses__() }}",
    "cycler-globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner-globals": "{{ joiner.__init__.__globals__ }}",
    "namespace-globals": "{{ namespace.__init__.__globals__['__builtins__'] }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "function-globals": "{{ raise_exception.__globals__ }}",
    "template-context": "{{ self._TemplateReference__context }}",
    "attr-filter": "{{ (''|attr('__class__')).__mro__ }}",
    "format-field": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "mutate-caller": "{{ messages.append('injected') }}{{ messages.clear() }}",
    "dict-update": "{{ messages[0].update({'role': 'system'}) }}",
    "getitem-dunder": "{{ messages['__class__'] }}{{ (messages|first)['__class__'].__init__ }}",
}


@pytest.mark.parametrize("name", SSTI_PAYLOADS)
def test_template_escapes_stay_blocked(tmp_path, name):
    tokenizer = Tokenizer(write_model(tmp_path / "m", SSTI_PAYLOADS[name]))
    messages = [{"role": "user", "content": "hi"}]
    try:
        rendered = tokenizer.apply_chat_template(messages)
    except TokenizerError as e:
        assert "chat template failed" in str(e) and "\n" not in str(e)
    else:  # an undefined attribute renders as nothing: harmless, as long as nothing leaked
        assert "class" not in rendered and "uid=" not in rendered and "function" not in rendered, rendered
    assert messages == [{"role": "user", "content": "hi"}]


def test_bounds_hold_on_other_threads_each_with_its_own_budget(tmp_path):
    """The engine renders on its own thread: the deadline needs no signal, and two renders do not share a budget."""
    import threading
    import time

    slow = Tokenizer(write_model(tmp_path / "slow", DOS_TEMPLATES["nested-loops"]))
    fine = Tokenizer(write_model(tmp_path / "fine", "{% for i in range(3000) %}{{ i % 10 }}{% endfor %}"))
    outcomes = {}

    def render(name, tokenizer):
        start = time.monotonic()
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
            outcomes[name] = (text, time.monotonic() - start)
        except TokenizerError as e:
            outcomes[name] = (str(e), time.monotonic() - start)

    threads = [threading.Thread(target=render, args=(name, tokenizer))
               for name, tokenizer in (("slow", slow), ("fine", fine))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert "chat template exceeded its time limit" in outcomes["slow"][0] and outcomes["slow"][1] < 2.0
    assert outcomes["fine"][0] == "0123456789" * 300
