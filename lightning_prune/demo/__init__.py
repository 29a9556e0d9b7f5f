"""Built-in models and data for the console script, the examples and the tests.

Nothing in the rest of the package depends on this subpackage.
"""

from lightning_prune.demo.data import DigitsDataModule
from lightning_prune.demo.models import LeNet, LeNet300100, SmallConvNet
from lightning_prune.demo.module import ImageClassifier

__all__ = ["DigitsDataModule", "ImageClassifier", "LeNet", "LeNet300100", "SmallConvNet"]
