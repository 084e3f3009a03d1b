# Set-up and entry points. Each target installs what it needs first.
PYTHON ?= python3
# Exact pins: an open range lets pip pull a newer multi-GB CUDA build.
TORCH := torch==2.14.1 torchvision==0.29.1
SAMPLE := Resources/SampleData/ct_abdomen_dicom
DEMO_OUT := demo-output

.PHONY: install install-test demo test

install:
	$(PYTHON) -m pip install --quiet $(TORCH) -e ".[engine]"

install-test:
	$(PYTHON) -m pip install --quiet $(TORCH) -e ".[test]"

# Box prompts for five structures on the shipped CT series, propagated through
# the volume with the bare LiteMedSAM backbone; prints Dice and surface Dice
# against the shipped reference labels.
demo: install
	mkdir -p $(DEMO_OUT)
	$(PYTHON) -m segmote.cli segment $(SAMPLE)/series --prompts $(SAMPLE)/prompts.json \
		--adapters none --output $(DEMO_OUT)/labels.nii.gz --overlay $(DEMO_OUT)/overlay.png
	$(PYTHON) -m segmote.cli evaluate $(DEMO_OUT)/labels.nii.gz $(SAMPLE)/labels.nii.gz
	@echo "Label map: $(DEMO_OUT)/labels.nii.gz (table beside it); overlay: $(DEMO_OUT)/overlay.png"

test: install-test
	$(PYTHON) -m pytest
