"""Names, places and the other kinds a regex cannot see, found by Microsoft Presidio (the `pii` extra) with a
spaCy NER model, next to `PiiScanner`'s own detectors.

Presidio's analyzer loads a spaCy pipeline by package name or by path, and downloads a missing one from the
internet on first use; a server on a closed network would hang or fail there at its first request. So the
model must be there when the detector is made (an installed package such as `en_core_web_lg`, or a model
directory): otherwise a `ConfigError` says how to get it, and nothing is downloaded.

Each Presidio entity becomes a finding of kind `entity.lower()` (`PERSON` -> `person`, placeholder
`<PERSON_1>`). Presidio's own pattern recognizers (e-mail, phone, cards...) are left out: the scanner's
detectors find those, checked and measured (`bench/guard_overhead.py`); Presidio adds what needs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentstack.errors import ConfigError

__all__ = ["PresidioDetector"]


class PresidioDetector:
    """Finds `entities` in text with Presidio's NER recognizer on the spaCy `model` (a package name or a path)
    at or above `threshold`. Made once per server: loading a pipeline takes seconds."""

    def __init__(
        self,
        model: str,
        *,
        entities: Sequence[str],  # the settings' `pii_presidio_entities` (their default: PERSON, LOCATION, NRP)
        language: str = "en",
        threshold: float = 0.5,
    ) -> None:
        try:
            import spacy
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import SpacyNlpEngine
            from presidio_analyzer.predefined_recognizers import SpacyRecognizer
        except ImportError:
            raise ConfigError(
                "finding names and places needs Presidio, which is not installed",
                fix="pip install 'agentstack[pii]', or unset AGENTSTACK_PII_PRESIDIO_MODEL",
            ) from None
        if not (spacy.util.is_package(model) or Path(model).is_dir()):
            raise ConfigError(
                f"the spaCy model {model!r} is neither an installed package nor a model directory, and is not "
                "downloaded for you (a server should not reach the internet at its first request)",
                fix=f"on a machine with internet: python -m spacy download {model} (or pip install its wheel), "
                "or set AGENTSTACK_PII_PRESIDIO_MODEL to a model directory (nlp.to_disk)",
            )
        self.entities = [e.upper() for e in entities]
        self.language = language
        self.threshold = threshold
        engine = SpacyNlpEngine(models=[{"lang_code": language, "model_name": model}])
        engine.load()
        registry = RecognizerRegistry(supported_languages=[language])
        registry.add_recognizer(SpacyRecognizer(supported_language=language, supported_entities=self.entities))
        self._analyzer: Any = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[language])

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """(kind, start, end) of each entity found in `text`."""
        results = self._analyzer.analyze(
            text=text, language=self.language, entities=self.entities, score_threshold=self.threshold
        )
        return [(r.entity_type.lower(), r.start, r.end) for r in results]
