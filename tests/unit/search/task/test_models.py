"""Building the base models: the ViT patch size chosen for small inputs."""

from search.task.models import create, patch_size_for

VIT = "vit_tiny_patch16_224"


def test_patch_size_is_chosen_for_small_inputs():
    assert patch_size_for(32, 16) == 4 and patch_size_for(224, 16) == 16
    assert patch_size_for(24, 16) == 3 and patch_size_for(64, 16) == 8
    model = create(VIT, 10, 32)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.num_patches == 64
    assert create(VIT, 10, 32, patch_size=8).patch_embed.num_patches == 16
