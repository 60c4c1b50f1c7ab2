"""The questions: A/B items and prompt files (data), the behaviour catalogue, mirrored answer
orders, the prompt format and answer tokens, Yes/No polarity classes, the cloze form of a
question. Imports only steerlab.base."""
