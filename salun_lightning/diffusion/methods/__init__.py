"""The diffusion unlearning methods (docs/design.md, 'Diffusion unlearning'): one class per method, one file each,
and the registry :data:`METHODS` (name -> class) that
:class:`~salun_lightning.diffusion.DiffusionUnlearningModule` looks a config's ``method`` up in.

A new method is a :class:`DiffusionMethod` subclass in its own file plus its entry here (and a config).

Example::

    >>> METHODS["salun"].stream, METHODS["salun"].takes_mask, METHODS["esd_x"].erases_concept
    ('forget_retain', True, True)
    >>> sorted(METHODS["esd_u"].Hyperparameters.search_space())
    ['esd_eta', 'esd_sampling_guidance', 'esd_sampling_steps']
"""

from salun_lightning.diffusion.methods.base import DiffusionMethod
from salun_lightning.diffusion.methods.concept import ConceptErasure
from salun_lightning.diffusion.methods.esd import Esd
from salun_lightning.diffusion.methods.esd_u import EsdU
from salun_lightning.diffusion.methods.esd_x import EsdX
from salun_lightning.diffusion.methods.fmn import ForgetMeNot
from salun_lightning.diffusion.methods.ga import GradientAscent
from salun_lightning.diffusion.methods.relearn import Relearn
from salun_lightning.diffusion.methods.retrain import Retrain
from salun_lightning.diffusion.methods.rl import RandomLabel
from salun_lightning.diffusion.methods.salun import SalUn
from salun_lightning.diffusion.methods.train import Train

# in this order in the models' error messages
METHODS: dict[str, type[DiffusionMethod]] = {
    method.name: method for method in (
        Train, Retrain, GradientAscent, RandomLabel, SalUn, EsdX, EsdU, ForgetMeNot, Relearn)
}

__all__ = ["METHODS", "ConceptErasure", "DiffusionMethod", "Esd", "ForgetMeNot"]
