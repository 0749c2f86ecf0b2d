"""Warnings from the libraries underneath that say nothing to an agentstack user, as `warnings` filter patterns.

Kept apart (no imports) so the pytest plugin can install them without loading LangChain.
"""

# langchain-openai (1.7) streams a structured reply through openai's `beta.chat.completions.stream` and dumps each
# event with `model_dump()`, whose snapshot types `parsed` as None while it holds our pydantic model: pydantic
# warns on every streamed structured call (`agentstack run`, a notebook, `stream_run`) about a copy nobody reads
# (StructuredCall parses the reply's text). The non-streaming path passes `warnings=False` upstream already.
# No colon in the pattern: pytest's `filterwarnings` lines split on colons.
PARSED_SNAPSHOT_WARNING = r"(?s)Pydantic serializer warnings.*Expected `none`.*field_name='parsed'"
