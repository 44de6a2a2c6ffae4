"""Export: a trained run to a merged model, GGUF, an Ollama Modelfile, and their parity check."""
