"""Serving a published fine-tune outside peftflow: `chat` (how a chat model is logged so MLflow's
scoring server answers OpenAI-style chat requests), `checks` (is a dir ready for vLLM or a
transformers server), `gguf` (one GGUF file through llama.cpp's converter, checked by a round trip).

`chat` and `checks` sit below `mlflow_io` (publishing uses them); `gguf` sits above it (it
downloads versions and attaches its file to them). Nothing is imported here, so importing one
part never pulls in the others."""
