"""Data: readers, cleaning stages, the prepare pipeline, tokenizer training and token packing.

oficina data prepare examples/demo/reference.jsonl --out data/clean --config examples/data.yaml
oficina tokenizer train data/clean --vocab-size 8000 --out tok/
oficina tokenizer eval --tokenizers tok/ smollm2-135m-instruct --text held_out.txt
oficina data pack data/clean --tokenizer tok/ --out packed/
"""
