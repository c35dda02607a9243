import time, torch
from selfsup.views import make_views
from selfsup.views import image as ops

dev = "cuda"
maker = make_views("simclr", (3, 32, 32), {})
images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=dev)
g = torch.Generator(device=dev).manual_seed(0)
for _ in range(20):
    maker(images, g)
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")
maker(images, g)
torch.cuda.set_sync_debug_mode("default")
n = 200
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); t = time.perf_counter(); start.record()
for _ in range(n):
    maker(images, g)
end.record(); host = (time.perf_counter() - t) / n * 1e3
torch.cuda.synchronize()
print(f"two simclr views 512x3x32x32: {start.elapsed_time(end)/n:.3f} ms/call (GPU), host launch {host:.3f} ms/call")
m = make_views("byol", (3, 32, 32), {})
for _ in range(10): m(images, g)
torch.cuda.synchronize(); start.record()
for _ in range(n): m(images, g)
end.record(); torch.cuda.synchronize()
print("byol 512x3x32x32", f"{start.elapsed_time(end)/n:.3f} ms")
big = torch.randint(0, 256, (256, 3, 96, 96), dtype=torch.uint8, device=dev)
m = make_views("byol", (3, 96, 96), {})
for _ in range(10): m(big, g)
torch.cuda.synchronize(); start.record()
for _ in range(50): m(big, g)
end.record(); torch.cuda.synchronize()
print("byol 256x3x96x96 (blur on)", f"{start.elapsed_time(end)/50:.3f} ms")

with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
    maker(images, g); torch.cuda.synchronize()
kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
print("cuda kernels per simclr call:", len(kernels))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))

# cross-check against torchvision (not a test: torchvision only lives on this machine)
import torchvision.transforms.v2.functional as TF
x = torch.rand(4, 3, 20, 24, device=dev)
f = torch.tensor([0.6, 1.3, 0.0, 2.0], device=dev)
for name, mine, theirs in [
    ("brightness", ops.adjust_brightness, TF.adjust_brightness),
    ("contrast", ops.adjust_contrast, TF.adjust_contrast),
    ("saturation", ops.adjust_saturation, TF.adjust_saturation),
]:
    ref = torch.stack([theirs(x[i], float(f[i])) for i in range(4)])
    print(name, "max |diff| vs torchvision:", (mine(x, f) - ref).abs().max().item())
h = torch.tensor([0.05, -0.1, 0.02, 0.0], device=dev)
ref = torch.stack([TF.adjust_hue(x[i], float(h[i])) for i in range(4)])
d = (ops.adjust_hue(x, h) - ref).abs()
print("hue (YIQ vs HSV) max |diff|:", d.max().item(), "mean", d.mean().item())
print("gray", (ops.rgb_to_gray(x) - TF.rgb_to_grayscale(x)).abs().max().item())
boxes = torch.tensor([[3., 2., 10., 12.]] * 4, device=dev)
ref = TF.resized_crop(x, 3, 2, 10, 12, [15, 17], antialias=False)
print("crop upsample vs torchvision", (ops.crop_resize(x, boxes, (15, 17)) - ref).abs().max().item())
ref = TF.resized_crop(x, 3, 2, 10, 12, [7, 5], antialias=False)
print("crop downsample vs torchvision", (ops.crop_resize(x, boxes, (7, 5)) - ref).abs().max().item())
sig = torch.tensor([0.5, 1.0, 1.5, 2.0], device=dev)
ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sig[i])]*2) for i in range(4)])
print("blur vs torchvision", (ops.gaussian_blur(x, sig, (5, 5)) - ref).abs().max().item())
