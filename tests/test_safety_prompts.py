"""The classroom filter's prompt check: what it refuses, what it never refuses, levels, speed."""

from __future__ import annotations

import itertools
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from speech2image_nb.errors import ConfigError
from speech2image_nb.safety import Policy, PromptVerdict, check_prompt, mask_text
from speech2image_nb.safety import policy as policy_module
from speech2image_nb.safety.policy import load_word_file
from speech2image_nb.safety.wordlists import CATEGORIES, matcher_for
from tests.conftest import DATA_DIR, TIME_FACTOR

LISTS = DATA_DIR / "safety"
STRICT = Policy()
STANDARD = Policy(level="standard")


def _lines(name: str) -> list[str]:
    text = (LISTS / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _full_width(text: str) -> str:
    """``text`` in full-width letters (U+FF41...), as some keyboards and copy-pastes type them."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in text)


def _refused(text: str, policy: Policy = STRICT) -> list[str]:
    return [text[start:end] for start, end in check_prompt(text, policy).spans]


# --- the API -----------------------------------------------------------------------------------


def test_verdict_shape_for_allowed_and_refused_prompts():
    """An allowed prompt has no category and no spans; a refused one has both."""
    ok = check_prompt("a red fox in the snow")
    assert ok == PromptVerdict(True, None, ())
    bad = check_prompt("a naked man in the snow")
    assert isinstance(bad, PromptVerdict)
    assert (bad.allowed, bad.category, bad.spans) == (False, "sexual", ((2, 7),))


def test_default_policy_is_strict():
    """check_prompt without a policy checks at strict."""
    assert Policy().level == "strict"
    assert not check_prompt("a boy holding a gun").allowed


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("a naked woman", "sexual"),
        ("a man being tortured", "violence"),
        ("a girl with a pistol", "weapons"),
        ("i want to kill myself", "self_harm"),
        ("a man snorting cocaine", "drugs"),
        ("a swastika flag", "hate"),
        ("a pile of shit", "profanity"),
    ],
)
def test_each_category_is_reported(text: str, category: str):
    """Each built-in category refuses a plain example and reports its own name."""
    assert category in CATEGORIES
    assert check_prompt(text).category == category


def test_most_serious_category_wins():
    """A prompt with words of several categories reports the most serious (sexual before drugs)."""
    assert check_prompt("a drunk naked man").category == "sexual"


def test_unknown_level_is_a_config_error_saying_what_to_use():
    """An unknown level raises ConfigError naming the levels to use."""
    with pytest.raises(ConfigError, match="strict, standard, off"):
        Policy(level="lenient")


# --- how speech and typing spell a word ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("A NAKED WOMAN", id="upper case"),
        pytest.param("a Naked woman", id="title case"),
        pytest.param("a naked, naked!!! woman...", id="punctuation"),
        pytest.param("a room of hookers", id="plural"),
        pytest.param("the murderers' den", id="plural possessive"),
        pytest.param("the boys are killing the dragon", id="inflection -ing"),
        pytest.param("the knight killed a man", id="inflection -ed"),
        pytest.param("he stabbed the giant", id="inflection with doubled consonant"),
        pytest.param("a man murdering a dragon", id="inflection of a two-syllable word"),
        pytest.param("a crowd of nudists", id="plural of a listed word"),
        pytest.param("the killer's mask", id="possessive"),
        pytest.param("covered in blood", id="phrase"),
        pytest.param("covered -- in... blood", id="phrase across punctuation"),
        pytest.param("Covered   In\nBlood", id="phrase across spaces and lines"),
        pytest.param("two girls one cup", id="numbers as words"),
        pytest.param("2 girls 1 cup", id="numbers as digits"),
        pytest.param("fourteen eighty eight", id="number words for a listed number"),
        pytest.param("s3x", id="leetspeak digit"),
        pytest.param("p0rn", id="leetspeak zero"),
        pytest.param("n4ked", id="leetspeak four"),
        pytest.param("k1ll the teacher", id="leetspeak one as i"),
        pytest.param("b00bs", id="leetspeak double zero"),
        pytest.param("@ss", id="leetspeak symbol"),
        pytest.param("s.e.x", id="dots between letters"),
        pytest.param("s-e-x", id="hyphens between letters"),
        pytest.param("s_e_x", id="underscores between letters"),
        pytest.param("a s e x scene", id="spaces between letters"),
        pytest.param("N. A. K. E. D.", id="dots and spaces between letters"),
        pytest.param("na-ked", id="hyphen inside the word"),
        pytest.param("f*ck", id="masked letter"),
        pytest.param("b**bs", id="masked letters"),
        pytest.param("nuuuuude", id="repeated letters"),
        pytest.param("kiiiiill him", id="repeated letters next to a double"),
        pytest.param("nüde", id="accent"),
        pytest.param("NÀKED", id="accent upper case"),
        pytest.param(_full_width("naked"), id="full-width letters (NFKC)"),
        pytest.param("\u0430 n\u0430k\u0435d man", id="Cyrillic look-alikes"),
        pytest.param("na\u200bked", id="zero-width space"),
        pytest.param("na\u00adked", id="soft hyphen"),
        pytest.param("n\u0307aked", id="combining mark"),
    ],
)
def test_spelling_tricks_are_read_through(text: str):
    """Case, punctuation, inflections, phrases, numbers, leetspeak, separators, repeats, unicode."""
    assert not check_prompt(text).allowed, text


# --- what is never refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a rooster on a fence",
        "a swimmer's stroke",
        "a map of Scunthorpe",
        "a cocktail dress",
        "a cottage in Sussex",
        "a therapist's office",
        "a bunch of grapes",
        "a bass guitar",
        "a glass of water",
        "a peacock",
        "a shuttlecock",
        "a spice rack",
        "a striped cat",
        "a brass band",
        "the analyst",
        "Hancock",
        "a button",
        "a pen island",
        "a passenger train",
    ],
)
def test_never_refuses_a_word_for_a_substring(text: str):
    """A refused word inside a longer word is not refused: whole words only."""
    assert check_prompt(text).allowed, _refused(text)


@pytest.mark.parametrize(
    "word",
    ["gay", "lesbian", "bisexual", "transgender", "trans", "queer", "black", "white", "asian", "muslim",
     "jewish", "jew", "christian", "hindu", "sikh", "arab", "mexican", "disabled", "deaf", "blind",
     "autistic", "immigrant", "refugee"],
)  # fmt: skip
@pytest.mark.parametrize("policy", [STRICT, STANDARD], ids=["strict", "standard"])
def test_identity_words_pass(word: str, policy: Policy):
    """Identity words are never refused for what they are, at any level."""
    for text in (f"a {word} family having a picnic", f"{word} people", f"a proud {word} teacher"):
        assert check_prompt(text, policy).allowed, text


def test_hateful_phrases_are_refused_but_not_their_identity_words():
    """A phrase attacking a group is refused; the mask covers the phrase, the same words alone pass."""
    assert check_prompt("kill all the jews").category == "hate"
    assert check_prompt("muslims are vermin").category == "hate"
    assert check_prompt("the jews of Berlin").allowed
    assert check_prompt("muslims at prayer").allowed


@pytest.mark.parametrize(
    "text",
    ["a hot dog with mustard", "a cocker spaniel", "bamboo shoots", "a bamboo shoot", "a shooting star",
     "a water gun fight", "a blue tit on a branch", "a killer whale", "a chicken breast", "Moby Dick",
     "a pussy willow", "a bath bomb", "a blood orange", "a dead end", "a bullet train", "a drug store",
     "a giraffe cocks its head"],
)  # fmt: skip
def test_built_in_allow_list_lets_harmless_phrases_through(text: str):
    """Phrases with a refused word inside them but a harmless meaning pass at strict."""
    assert check_prompt(text).allowed, _refused(text)


# --- levels ----------------------------------------------------------------------------------------


def test_strict_refuses_more_than_standard():
    """strict refuses the wider list (weapons, blood, drunk); standard only the unambiguous words."""
    for text in ("a boy holding a gun", "a bloody nose", "a drunk pirate", "a woman in a bikini"):
        assert not check_prompt(text, STRICT).allowed, text
        assert check_prompt(text, STANDARD).allowed, text
    for text in ("a naked man", "a beheaded knight", "kill yourself", "a pile of cocaine", "heil hitler"):
        assert not check_prompt(text, STANDARD).allowed, text


def test_off_checks_nothing():
    """At off every prompt is allowed."""
    off = Policy(level="off")
    assert check_prompt("a naked man with a gun", off) == PromptVerdict(True)
    assert mask_text("a naked man", off) == "a naked man"


def test_off_logs_its_warning_exactly_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Resolving and using level off warns once per process, not once per prompt."""
    monkeypatch.setattr(policy_module, "_warned_off", False)
    with caplog.at_level(logging.WARNING, logger="speech2image_nb.safety"):
        policy = Policy.resolve("off", environ={})
        Policy.resolve(environ={"S2I_SAFETY": "off"})
        for _ in range(3):
            check_prompt("anything", policy)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "is off" in r.getMessage()]
    assert len(warnings) == 1


# --- the teacher's words ---------------------------------------------------------------------------


def test_teachers_blocked_word_is_refused_as_custom():
    """A teacher's blocked word refuses, in any inflection, with category custom."""
    policy = Policy(blocked=("spider", "homework monster"))
    assert check_prompt("two big spiders", policy) == PromptVerdict(False, "custom", ((8, 15),))
    assert check_prompt("the HOMEWORK-monsters!", policy).category == "custom"
    assert check_prompt("a spiderman costume", policy).allowed


def test_teachers_number_matches_as_digits_or_words():
    """A teacher's blocked number refuses it written either way: "sixty nine" and "69"."""
    for blocked in ("sixty nine", "69", "sixty-nine"):
        policy = Policy(blocked=(blocked,))
        for text in ("room 69", "sixty nine balloons", "sixty-nine", "six nine"):
            assert check_prompt(text, policy).allowed is (text == "six nine"), (blocked, text)


def test_teachers_blocked_word_keeps_the_built_in_category_when_listed():
    """A built-in word a teacher also blocks reports its built-in category."""
    assert check_prompt("a naked man", Policy(blocked=("naked",))).category == "sexual"


def test_teachers_allowed_word_passes_and_wins_over_the_lists():
    """A teacher's allowed word or phrase passes even where a built-in or blocked list refuses it."""
    policy = Policy(allowed=("gun", "naked mole rat"), blocked=("spider",))
    assert check_prompt("a toy gun and a water pistol", Policy(allowed=("gun", "water pistol"))).allowed
    assert check_prompt("a naked mole rat", policy).allowed
    assert not check_prompt("a naked man", policy).allowed
    assert check_prompt("a spider", Policy(blocked=("spider",), allowed=("spider",))).allowed


def test_policy_words_may_be_given_as_a_list_or_a_string():
    """Policy(blocked=[...]) and Policy(blocked="a, b") work as tuples do."""
    assert Policy(blocked=["spider"]).blocked == ("spider",)  # type: ignore[arg-type]
    assert Policy(blocked="spider, ghost").blocked == ("spider", "ghost")  # type: ignore[arg-type]
    assert check_prompt("a ghost", Policy(blocked=["ghost"])).category == "custom"  # type: ignore[arg-type]


def test_word_file_reads_blocked_allowed_and_comments(tmp_path: Path):
    """A word file: one entry a line, + allows, - (or nothing) blocks, # comments, blanks skipped."""
    path = tmp_path / "words.txt"
    path.write_text("# our class\nspider\n- homework  # the children's idea\n\n+gun\n+ naked mole rat\n",
                    encoding="utf-8")  # fmt: skip
    assert load_word_file(path) == (["spider", "homework"], ["gun", "naked mole rat"])
    policy = Policy.resolve(word_file=path, environ={})
    assert policy.blocked == ("spider", "homework")
    assert check_prompt("more homework", policy).category == "custom"
    assert check_prompt("a gun", policy).allowed
    from_env = Policy.resolve(environ={"S2I_SAFETY_FILE": str(path), "S2I_SAFETY_BLOCK": "ghost, witch"})
    assert from_env.blocked == ("ghost", "witch", "spider", "homework")


def test_missing_word_file_is_a_config_error(tmp_path: Path):
    """A word file that cannot be read raises ConfigError naming the file."""
    with pytest.raises(ConfigError, match=r"words\.txt"):
        Policy.resolve(word_file=tmp_path / "words.txt", environ={})


def test_environment_sets_level_and_words():
    """S2I_SAFETY, S2I_SAFETY_BLOCK and S2I_SAFETY_ALLOW feed Policy.resolve; arguments win."""
    env = {"S2I_SAFETY": "Standard", "S2I_SAFETY_BLOCK": "spider, ghost", "S2I_SAFETY_ALLOW": "bikini"}
    policy = Policy.resolve(environ=env)
    assert (policy.level, policy.blocked, policy.allowed) == ("standard", ("spider", "ghost"), ("bikini",))
    assert Policy.resolve("strict", blocked=["bat"], environ=env).blocked == ("bat",)


# --- spans and masking -----------------------------------------------------------------------------


def test_spans_point_at_the_refused_words_in_the_original_text():
    """Spans are offsets into the text given, word by word, merged where they touch."""
    text = "A NUDE man, a gun and covered in blood."
    assert _refused(text) == ["NUDE", "gun", "covered in blood"]
    assert _refused("s.e.x and n u d e") == ["s.e.x", "n u d e"]


def test_spans_survive_unicode_that_changes_length():
    """Zero-width characters, ligatures and full-width letters keep spans on the original text."""
    text = f"the \u200bna\u200bked \ufb01sh and a {_full_width('nude')} elf"
    spans = check_prompt(text).spans
    assert [text[s:e] for s, e in spans] == ["na\u200bked", _full_width("nude")]


def test_mask_text_replaces_refused_words_with_the_same_length():
    """mask_text keeps the text's length and masks only the refused words."""
    text = "a naked man with a gun, and a rooster"
    masked = mask_text(text)
    assert masked == "a ••••• man with a •••, and a rooster"
    assert len(masked) == len(text)
    assert mask_text(text, mask="*") == "a ***** man with a ***, and a rooster"
    assert mask_text("a red fox") == "a red fox"
    assert mask_text(text, STANDARD) == "a ••••• man with a gun, and a rooster"


# --- our lists of prompts ----------------------------------------------------------------------


def test_unsafe_classroom_prompts_are_refused():
    """At least 95 % of tests/data/safety/unsafe_prompts.txt is refused at strict (misses printed)."""
    prompts = _lines("unsafe_prompts.txt")
    missed = [text for text in prompts if check_prompt(text).allowed]
    print(f"\nunsafe prompts refused: {len(prompts) - len(missed)} / {len(prompts)}; missed: {missed}")
    assert len(prompts) >= 150
    assert len(missed) <= 0.05 * len(prompts), missed


def test_harmless_prompts_that_naive_filters_refuse_pass():
    """At least 95 % of tests/data/safety/harmless_prompts.txt passes at strict (refusals printed)."""
    prompts = _lines("harmless_prompts.txt")
    refused = {text: _refused(text) for text in prompts if not check_prompt(text).allowed}
    print(f"\nharmless prompts passed: {len(prompts) - len(refused)} / {len(prompts)}; refused: {refused}")
    assert len(prompts) >= 150
    assert len(refused) <= 0.05 * len(prompts), refused
    assert all(check_prompt(text, STANDARD).allowed for text in prompts)


# --- cost ------------------------------------------------------------------------------------------


def test_a_session_of_prompts_takes_milliseconds():
    """1,000 prompts are checked in under 0.5 s (x S2I_TESTS_TIME_FACTOR) once the lists are compiled."""
    prompts = (_lines("harmless_prompts.txt") + _lines("unsafe_prompts.txt")) * 3
    prompts = [f"{text} number {i}" for i, text in enumerate(prompts[:1000])]
    check_prompt("warm up")
    start = time.perf_counter()
    for text in prompts:
        check_prompt(text)
    elapsed = time.perf_counter() - start
    print(f"\n1,000 prompts: {elapsed * 1e3:.1f} ms")
    assert elapsed < 0.5 * TIME_FACTOR


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("s.e.x." * 2000, id="a long spelt-out run"),
        pytest.param(" ".join("abcdefghij" * 500), id="5,000 single letters"),
        pytest.param("a" * 20000, id="one 20,000-letter word"),
        pytest.param("f*ck " * 1000 + "*" * 5000, id="masked letters"),
        pytest.param("\u200b".join("naked" * 1000), id="zero-width characters everywhere"),
    ],
)
def test_hostile_input_stays_fast(text: str):
    """Long and odd input (thousands of words) is checked in under a second, without error."""
    start = time.perf_counter()
    verdict = check_prompt(text)
    assert time.perf_counter() - start < 1.0 * TIME_FACTOR
    assert all(0 <= s < e <= len(text) for s, e in verdict.spans)
    assert len(mask_text(text)) == len(text)


def test_masking_keeps_length_on_random_text():
    """For any text, spans lie inside it, in order, and masking keeps its length."""
    rng = random.Random(21)
    alphabet = "naked sex gun kill  .-*'!03@$\u200b\u0301\uff4e\u0430\u00e9\ufb01ABC\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        spans = check_prompt(text).spans
        assert all(0 <= s < e <= len(text) for s, e in spans), (text, spans)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), (text, spans)
        assert len(mask_text(text)) == len(text)


def test_lists_are_compiled_once_per_policy():
    """The compiled tables are cached: the same policy gets the same tables."""
    assert matcher_for("strict", (), ()) is matcher_for("strict", (), ())
    assert matcher_for("strict", ("spider",), ()) is not matcher_for("strict", (), ())


def test_import_loads_no_torch_and_compiles_nothing():
    """import speech2image_nb.safety imports no heavy module and reads no word list."""
    probe = (
        "import json, sys\n"
        "import speech2image_nb.safety as s\n"
        "from speech2image_nb.safety import wordlists\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'transformers', 'diffusers', 'fastapi',"
        " 'ipywidgets', 'requests') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'compiled': wordlists._builtin.cache_info().currsize,"
        " 'matchers': wordlists.matcher_for.cache_info().currsize}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"heavy": [], "compiled": 0, "matchers": 0}


def test_word_lists_ship_as_package_data():
    """Every category's list exists and pyproject's package data includes the word lists."""
    folder = Path(policy_module.__file__).parent / "wordlists"
    for name in (*CATEGORIES, "allowed"):
        assert (folder / f"{name}.txt").is_file(), name
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert "safety/wordlists/*.txt" in pyproject["tool"]["setuptools"]["package-data"]["speech2image_nb"]
