"""Image registration (issue 26, first increment): pairwise 3D registration of a moving volume onto a fixed one.

Modules: ``fields`` (dense displacement fields: MONAI ``Warp``, scaling and squaring with MONAI ``DVF2DDF``,
resampling at voxel coordinates, Jacobian determinant and folding %, 2D and 3D), ``affine`` (gradient descent on
global NCC or MSE, 2 resolutions, from the world alignment and the centres of mass), ``classical`` (SimpleITK
diffeomorphic demons, optional extra ``meddiff[register]``), ``learned`` (VoxelMorph-style UNet -> stationary
velocity -> scaling and squaring, LNCC + smoothness; checkpoints), ``evaluate`` (Dice / HD95 of warped labels,
folding, seconds), ``pipeline`` (``register_arrays`` / ``register_file`` behind ``meddiff register``).
``diffusemorph`` (DiffuseMorph / DDM: a diffusion UNet's output latent -> deformation UNet -> stationary velocity,
the latent scaled by gamma for intermediate fields; checkpoints), ``interpolate`` (temporal interpolation between
two 2D frames: linear, SVF registration, DDM; behind ``meddiff interpolate``). DiffuseMorph for 3D IXI registration
is not trained (``meddiff register`` has no diffusemorph method yet).
"""

from meddiff.tasks.register.affine import (AffineSettings, apply_matrix, centre_of_mass, head_top_mask,
                                           register_affine, scale_intensity, world_matrix)
from meddiff.tasks.register.classical import DemonsSettings, demons
from meddiff.tasks.register.diffusemorph import (DiffuseMorph, DiffuseMorphConfig, LoadedDiffuseMorph,
                                                 diffusemorph_loss, load_diffusemorph, pair_scale, save_diffusemorph)
from meddiff.tasks.register.evaluate import pair_scores, summarise
from meddiff.tasks.register.fields import (affine_coords, folding_percent, identity_grid, integrate_velocity,
                                           jacobian_determinant, sample, warp)
from meddiff.tasks.register.learned import (DEFAULT_CHECKPOINT, LoadedRegistration, VelocityNet, VoxelMorphConfig,
                                            load_voxelmorph, pad_to_multiple, predict_ddf, registration_loss,
                                            save_voxelmorph, warp_pair)
from meddiff.tasks.register.interpolate import (Interpolation, ddm_fields, interpolate_file, interpolate_frames,
                                                svf_register)
from meddiff.tasks.register.pipeline import METHODS, Registration, from_ras, register_arrays, register_file, to_ras

__all__ = [
    "DEFAULT_CHECKPOINT", "METHODS", "AffineSettings", "DiffuseMorph", "DiffuseMorphConfig", "Interpolation",
    "LoadedDiffuseMorph", "ddm_fields", "diffusemorph_loss", "interpolate_file", "interpolate_frames",
    "load_diffusemorph", "pair_scale", "save_diffusemorph", "svf_register", "DemonsSettings", "LoadedRegistration", "Registration",
    "VelocityNet", "VoxelMorphConfig", "affine_coords", "apply_matrix", "centre_of_mass", "demons", "folding_percent",
    "from_ras", "head_top_mask", "identity_grid", "integrate_velocity", "jacobian_determinant", "load_voxelmorph",
    "pad_to_multiple", "pair_scores", "predict_ddf", "register_affine", "register_arrays", "register_file",
    "registration_loss", "sample", "save_voxelmorph", "scale_intensity", "summarise", "to_ras", "warp", "warp_pair",
    "world_matrix",
]
