# Two commands do all the set-up on a fresh machine (Python 3.11, make, git):
#   make demo   install into .venv, then segment the bundled sample cases into demo_out/,
#               denoise / upscale x2 / deblur degraded copies of the sample images (demo_out/restore/),
#               embed and classify the bundled Landsat scenes, and score the class map (demo_out/remote_sensing/),
#               demosaic the bundled 10-bit sensor mosaic, develop generated DNGs (DemosaicNet, our JDD), and
#               compare the methods on held-out photographs at noise 10/255 (demo_out/demosaic/)
#   make test   install into .venv, then run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -qq --disable-pip-version-check
STAMP := $(VENV)/.installed
LANDSAT := landsat8_LC80200392015216LGN00
TEST_ENV := PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 NO_ALBUMENTATIONS_UPDATE=1 \
            PREFECT_LOGGING_LEVEL=WARNING

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0 -c constraints.txt 2>&1 | grep -v "is ignored" || true
	$(PIP) install -e ".[dev,dask,demosaic,openvino]" -c constraints.txt 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import imagingflows.flows.cli, torch, monai, prefect"
	touch $(STAMP)

demo: install
	$(TEST_ENV) $(VENV)/bin/run-flow segment --input sample_data/brats --output demo_out
	$(PY) -m sample_data.restore --degrade denoise --out demo_out/restore/noisy > /dev/null
	$(PY) -m sample_data.restore --degrade sr --out demo_out/restore/lowres > /dev/null
	$(PY) -m sample_data.restore --degrade deblur --out demo_out/restore/blurred > /dev/null
	$(TEST_ENV) $(VENV)/bin/run-flow restore --task denoise --input demo_out/restore/noisy --output demo_out/restore/denoised
	$(TEST_ENV) $(VENV)/bin/run-flow restore --task sr --scale 2 --input demo_out/restore/lowres --output demo_out/restore/sr
	$(TEST_ENV) $(VENV)/bin/run-flow restore --task deblur --input demo_out/restore/blurred --output demo_out/restore/deblurred
	$(PY) -m sample_data.remote_sensing_demo scenes --out demo_out/remote_sensing/scenes > /dev/null
	$(PY) -m sample_data.remote_sensing_demo prepare --out demo_out/remote_sensing/data > /dev/null
	$(PY) -m sample_data.remote_sensing_demo east-reference --data demo_out/remote_sensing/data/classify \
	    --out demo_out/remote_sensing/held_out_labels > /dev/null
	$(TEST_ENV) $(VENV)/bin/run-flow embed --input demo_out/remote_sensing/scenes --output demo_out/remote_sensing/embed \
	    --patch-features
	$(TEST_ENV) $(VENV)/bin/run-flow classify --input demo_out/remote_sensing/scenes/$(LANDSAT) \
	    --output demo_out/remote_sensing/classify --probabilities
	$(TEST_ENV) $(VENV)/bin/run-flow evaluate classify --predictions demo_out/remote_sensing/classify \
	    --reference demo_out/remote_sensing/held_out_labels --output demo_out/remote_sensing/evaluate
	$(TEST_ENV) $(VENV)/bin/run-flow demosaic --input sample_data/demosaic --output demo_out/demosaic/mosaic \
	    --pattern GRBG --black 25 --white 1023
	$(PY) -m sample_data.dng --out demo_out/demosaic/dng > /dev/null
	$(TEST_ENV) $(VENV)/bin/run-flow demosaic --input demo_out/demosaic/dng --output demo_out/demosaic/developed \
	    --method demosaicnet
	$(TEST_ENV) $(VENV)/bin/run-flow demosaic --input demo_out/demosaic/dng --output demo_out/demosaic/developed_jdd \
	    --method jdd
	$(PY) -m sample_data.demosaic_demo --out demo_out/demosaic/data > /dev/null
	$(TEST_ENV) $(VENV)/bin/run-flow evaluate demosaic --input demo_out/demosaic/data/heldout \
	    --output demo_out/demosaic/evaluate --methods menon,demosaicnet,jdd,rawpy-ahd --noise 0.0392
	@echo "open demo_out/report.html, demo_out/restore/{denoised,sr,deblurred}/report.html,"
	@echo "     demo_out/remote_sensing/{embed,classify,evaluate}/report.html, demo_out/demosaic/{mosaic,developed,developed_jdd,evaluate}/report.html"

test: install
	PREFECT_HOME=$$(mktemp -d) $(TEST_ENV) $(PY) -m pytest -q

clean:
	rm -rf demo_out .pytest_cache
