"""Text to phonemes with espeak-ng, no audio: the phoneme mnemonics espeak would speak for a text.

The translation (``espeak_TextToPhonemes``) runs in a helper process with its own libespeak-ng, so the
synthesis zygote of :mod:`streamchar.data.espeak` stays pristine; :class:`RecordedPhonemizer` replays
answers recorded where espeak-ng is installed.
"""

from __future__ import annotations

import ctypes
import os

from streamchar.data.espeak import (
    CHARS_UTF8,
    START_LOCK,
    Espeak,
    EspeakError,
    HelperProcess,
    reply,
)

_PHONEME_SEPARATOR = ord("_") << 8  # espeak_TextToPhonemes: bits 8-23 hold the separator character


def _text_to_phonemes(lib, text: str, language: str) -> list[list[str]]:
    """Word groups of phoneme mnemonics (stress marks removed) for ``text`` in ``language``."""
    if lib.espeak_SetVoiceByName(language.encode()) != 0:
        raise EspeakError(f"espeak-ng has no voice '{language}'; list voices with `espeak-ng --voices`.")
    buffer = ctypes.create_string_buffer(text.encode("utf-8"))
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))
    groups: list[list[str]] = []
    while cursor.value:
        clause = lib.espeak_TextToPhonemes(ctypes.byref(cursor), CHARS_UTF8, _PHONEME_SEPARATOR)
        for word in (clause or b"").decode("ascii", "replace").split():
            groups.append([p for p in (x.strip("',") for x in word.split("_")) if p])
    return groups


def _start_phonemizer() -> tuple[ctypes.CDLL, None]:
    """This helper's own library, set up for ``espeak_TextToPhonemes`` (it never synthesises)."""
    lib = Espeak().lib
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    return lib, None


def _answer(lib: ctypes.CDLL, request: tuple[str, str]) -> tuple[str, object]:
    text, language = request
    return reply(_text_to_phonemes, lib, text, language)


class EspeakPhonemizer(HelperProcess):
    """espeak-ng's text-to-phoneme translation (``espeak_TextToPhonemes``) in a helper process.

    The helper keeps its own library, so this process's synthesis zygote stays pristine; a request
    costs a pipe round trip (tens of microseconds), not a fork.
    """

    def __init__(self) -> None:
        super().__init__(_start_phonemizer, _answer)

    def words(self, text: str, language: str = "en-us") -> list[list[str]]:
        """espeak's phoneme mnemonics of ``text``, one list per word it spoke."""
        status, value = self._request((text, language))
        if status != "ok":
            raise EspeakError(value.partition(": ")[2] or value)
        return value


class RecordedPhonemizer:
    """espeak's answers read from a file instead of espeak, for a machine without libespeak-ng (the GPU
    machines, whose image lacks it) that speaks only texts recorded beforehand where espeak runs.

    ``STREAMCHAR_PHONEMES=FILE`` makes :func:`get_phonemizer` return one; ``STREAMCHAR_RECORD_PHONEMES=FILE``
    makes it record every answer of the real espeak into ``FILE`` (JSON ``{language: {text: words}}``).
    """

    def __init__(self, path: str | os.PathLike, inner: EspeakPhonemizer | None = None) -> None:
        import json

        self.path, self.inner = str(path), inner
        self.table: dict[str, dict[str, list[list[str]]]] = {}
        if os.path.isfile(self.path):
            self.table = json.loads(open(self.path, encoding="utf-8").read())
        elif inner is None:
            raise EspeakError(f"No recorded phonemes at {self.path}; record them where espeak-ng is installed "
                              "with STREAMCHAR_RECORD_PHONEMES set, or unset STREAMCHAR_PHONEMES.")  # fmt: skip

    def words(self, text: str, language: str = "en-us") -> list[list[str]]:
        known = self.table.get(language, {})
        if text in known:
            return known[text]
        if self.inner is None:
            raise EspeakError(f"'{text[:40]}' ({language}) is not among the phonemes recorded in {self.path}; "
                              "record it where espeak-ng is installed (STREAMCHAR_RECORD_PHONEMES).")  # fmt: skip
        import json

        value = known[text] = self.inner.words(text, language)
        self.table[language] = known
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.table, ensure_ascii=False, indent=0, sort_keys=True) + "\n")
        return value


_PHONEMIZER: EspeakPhonemizer | RecordedPhonemizer | None = None
_PHONEMIZER_PID: int | None = None


def get_phonemizer() -> EspeakPhonemizer | RecordedPhonemizer:
    """The process's text-to-phoneme helper (started on first use): espeak-ng, or its recorded answers
    (see :class:`RecordedPhonemizer`)."""
    global _PHONEMIZER, _PHONEMIZER_PID
    with START_LOCK:
        if _PHONEMIZER is None or _PHONEMIZER_PID != os.getpid():
            if os.environ.get("STREAMCHAR_PHONEMES"):
                _PHONEMIZER = RecordedPhonemizer(os.environ["STREAMCHAR_PHONEMES"])
            elif os.environ.get("STREAMCHAR_RECORD_PHONEMES"):
                _PHONEMIZER = RecordedPhonemizer(os.environ["STREAMCHAR_RECORD_PHONEMES"], EspeakPhonemizer())
            else:
                _PHONEMIZER = EspeakPhonemizer()
            _PHONEMIZER_PID = os.getpid()
        return _PHONEMIZER
