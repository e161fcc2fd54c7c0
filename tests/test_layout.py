"""Channels-last weights during the flip search: same function, model returned exactly."""

import torch
from memloc.core.classifier.conv_layout import channels_last_on_cpu
from memloc.core.training.zoo import ModelSpec, build_model


def test_channels_last_keeps_outputs_and_restores_storage():
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", (1, 28, 28), 10)).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    params = {name: (p, p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    convs = [p for p in model.parameters() if p.dim() == 4]
    with channels_last_on_cpu(model), torch.no_grad():
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert not all(p.is_contiguous() for p in convs)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        same, ptr, stride = params[name]
        assert p is same and p.data_ptr() == ptr and p.stride() == stride
    with torch.no_grad():
        assert torch.equal(model(x), before)
