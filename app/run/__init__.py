"""One run of an experiment: built from the composed config (`build`), executed (`execute`),
recorded (`record`, `provenance`), repeated over seeds (`seeds`), continued (`resume`), launched
from the command line (`launch`), on several processes (`distributed`)."""
