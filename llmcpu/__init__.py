"""llmcpu: language models as trained CPUs; tokenizers as compilers; id tables as ISAs."""
