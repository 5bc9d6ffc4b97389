"""Pseudo-mask method `irnet` (tag2mask.core.methods): IRNet's instances, from the
trained boundary and displacement branches (irnet/irnet.pt) and the CAMs (cams/cams.h5), by
centroids and a sparse random walk (tag2mask.irnet.instances)."""


def make_shard(inputs, manifest, options, shard, num_shards, out, panels=None, progress=True):
    from ..core.devices import resolve_device
    from .instances import write_instances
    from .model import load_irnet

    device = resolve_device(options["device"], "irnet.device")
    model, meta = load_irnet(inputs["model"], device)
    return write_instances(model, meta, inputs["cams"], manifest, options, shard, num_shards,
                           out, device, progress=progress)
