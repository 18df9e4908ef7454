"""The official code's side of the side-by-side benchmark (benchmarks/ours.py is ours; compare.py
runs both): the same three workloads, run with the modules, loss functions and optimiser settings
of the official PyTorch SemanticGAN (nv-tlabs/semanticGAN_code), imported at run time from a
checkout given by --official. Nothing of that code is stored in this repository.

    git clone https://github.com/nv-tlabs/semanticGAN_code /tmp/official_ref   # never commit it
    pip install -e '.[torch]'          # torch; torchvision, tensorboard, cv2 ... are not needed

    python benchmarks/official.py --official /tmp/official_ref --what stage1 --size 64 --batch 8
    python benchmarks/official.py --official /tmp/official_ref --what encoder --size 64 --batch 8
    python benchmarks/official.py --official /tmp/official_ref --what segment --size 256 --images 2 \
        --steps 100 --steps-timed 5
    options: --channel-multiplier 2  --seg-dim 6  --no-lpips  --repeats 5  --warmup 1  --threads N
             --device cpu|cuda  --tf32  --json out.json (appends the row)

Networks as the official scripts build them (GeneratorSeg(size, 512, 8, seg_dim, 'RGB',
channel_multiplier); Dr = Discriminator(size, 3, channel_multiplier); Dm =
MultiscaleDiscriminator(3 + seg_dim, getIntermFeat=True); FPNEncoder(3, n_latent)), randomly
initialised; random batches in the official loader's format (images uniform in [-1, 1], masks
one-hot scaled to [-1, 1]), a fresh view per iteration. What one timed call runs:

stage1   the body of train() in semanticGAN/train_seg_gan.py with that module's functions
         (mixing_noise, d_logistic_loss, d_r1_loss, g_nonsaturating_loss, g_path_regularize,
         prep_dseg_*, GANLoss, accumulate, reduce_loss_dict): Dr step; Dm step; lazy R1 on Dr and
         Dm; G step (fake image detached into Dm, feature matching 2.0 / 3 per scale); lazy path
         length on batch / 2; EMA; every logged loss read with .item(). Style mixing 0.9, Adam
         lr 0.002 c, betas (0, 0.99 ** c), c = k / (k + 1). Timed in three variants (plain, +R1,
         +path length); the iteration is their schedule's mean, plain + (r1 - plain) / 16 +
         (path - plain) / 4; the spread is the plain variant's min-max.
encoder  the body of train() in semanticGAN/train_enc.py: frozen G, unlabeled update (MSE +
         10 LPIPS, clip 2) then labeled update (CE tau 0.1 + Dice + MSE + 10 LPIPS, clip 5), two
         Ranger optimisers (lr 0.001), losses read with .item(). The encoder runs in eval mode:
         the official loop's first validation (i = 0) switches it there and nothing switches it
         back.
segment  semanticGAN/inference.py for --images images (default --batch), one after another:
         per image E(x) under no_grad, --steps Adam steps (lr 0.1 with its ramp) on w+ and the
         noise maps, loss LPIPS + 1e2 noise regularisation + 0.1 MSE + 1e-3 encoder consistency,
         noise renormalisation, the .item() of the printed losses, then the final G forward and
         argmax. As in the official loop G's parameters stay trainable, so every step also
         computes G's weight gradients. --steps-timed k runs k steps per image (same lr schedule)
         and scales the whole time by steps / k (the summary line says so).

Not timed: data loading, TensorBoard, sampling / validation / FID / checkpoints, image files.
LPIPS is the official module with its linear weights from the checkout's models/lpips/weights
and a randomly initialised VGG16 (torchvision's ImageNet weights cannot be downloaded here; the
cost is the same); --no-lpips drops the LPIPS terms (encoder, segment). GANLoss gets
torch.FloatTensor on CPU (the official hard-codes torch.cuda.FloatTensor).

On CPU the official CUDA ops are not compiled: benchmarks/official_code.py replaces
torch.utils.cpp_extension.load with a stub while importing, and on CPU tensors models/op's
upfirdn2d and fused_leaky_relu take their PyTorch fallbacks. Optional packages the official
scripts import at module level (tensorboard, cv2, albumentations, skimage, torchvision) are
stubbed there when missing. With --device cuda nothing is stubbed for the ops: they compile as
in the official code (ninja, nvcc), and cudnn.benchmark is on for stage1 / encoder as there.
On cuda, fp32 is IEEE fp32 for convolutions and matmuls (torch's TF32 flags off) unless --tf32;
ours.py has the same flag, so both sides do the same arithmetic.

Output: the row of common.format_row, a summary line (device, torch, threads, per-variant ms or
s/image, parameter counts), and with --json the row appended to a JSON list (ms_iteration,
images_per_s, spread_ms, timings_ms, ms_variants, threads, torch, device, params, peak memory:
torch.cuda.max_memory_allocated or the process's max RSS).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import optim

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import amortised_iteration, report, spread, time_calls  # noqa: E402
from official_code import import_official, perceptual_loss  # noqa: E402

LATENT, N_MLP = 512, 8  # args.latent, args.n_mlp as all three official scripts set them
# argparse defaults of semanticGAN/train_seg_gan.py, train_enc.py and inference.py
STAGE1 = dict(lr=0.002, r1=10.0, path_regularize=2.0, path_batch_shrink=2, d_reg_every=16, g_reg_every=4,
              mixing=0.9, lambda_dseg_feat=2.0, latent=LATENT)
ENCODER = dict(lr=0.001, lr_decay=1e-5, lr_decay_iter_start=30000, lr_decay_iter_end=100000,
               lambda_label_lpips=10.0, lambda_label_mse=1.0, lambda_label_ce=1.0, lambda_label_dice=1.0,
               lambda_unlabel_lpips=10.0, lambda_unlabel_mse=1.0, label_grad_clip=5.0, unlabel_grad_clip=2.0)
INFERENCE = dict(lr=0.1, lr_rampup=0.05, lr_rampdown=0.25, noise_regularize=1e2, lambda_mse=0.1,
                 lambda_encoder=1e-3, lambda_encoder_init=0.0)
MODULES = {"stage1": ["semanticGAN.train_seg_gan"],
           "encoder": ["semanticGAN.train_enc"],
           "segment": ["semanticGAN.inference", "models.encoder_model", "models.lpips"]}


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def random_batch(a) -> dict[str, torch.Tensor]:
    """image / seg_image in [-1, 1] and seg_mask one-hot in [-1, 1], NCHW (seg_dim 1: a binary map)."""
    g = torch.Generator().manual_seed(0)
    shape = (a.batch, 3, a.size, a.size)
    labels = torch.randint(0, max(a.seg_dim, 2), (a.batch, a.size, a.size), generator=g)
    mask = F.one_hot(labels, max(a.seg_dim, 2))[..., -a.seg_dim:].permute(0, 3, 1, 2).float()
    batch = {"image": torch.rand(shape, generator=g) * 2 - 1, "seg_image": torch.rand(shape, generator=g) * 2 - 1,
             "seg_mask": mask * 2 - 1}
    return {k: v.to(a.device) for k, v in batch.items()}


def build_generator(m, a):
    """GeneratorSeg as the official scripts build it."""
    return m.GeneratorSeg(a.size, LATENT, N_MLP, seg_dim=a.seg_dim, image_mode="RGB",
                          channel_multiplier=a.channel_multiplier).to(a.device)


# ---- stage 1: semanticGAN/train_seg_gan.py ---------------------------------------------------

def build_stage1(tr, a):
    """Networks, optimisers and loop state exactly as train_seg_gan.py's __main__ and train() set
    them up (GANLoss's tensor type follows the device: the official passes torch.cuda.FloatTensor)."""
    args = argparse.Namespace(**STAGE1, batch=a.batch, seg_dim=a.seg_dim)
    g, g_ema = build_generator(tr, a), build_generator(tr, a)
    g_ema.eval()
    tr.accumulate(g_ema, g, 0)
    d_img = tr.Discriminator(a.size, input_dim=3, channel_multiplier=a.channel_multiplier).to(a.device)
    d_seg = tr.MultiscaleDiscriminator(input_nc=3 + a.seg_dim, getIntermFeat=True).to(a.device)
    g_ratio = args.g_reg_every / (args.g_reg_every + 1)
    d_ratio = args.d_reg_every / (args.d_reg_every + 1)

    def adam(net, c):
        return optim.Adam(net.parameters(), lr=args.lr * c, betas=(0 ** c, 0.99 ** c))
    tensor = torch.cuda.FloatTensor if a.device.startswith("cuda") else torch.FloatTensor
    return types.SimpleNamespace(
        args=args, device=a.device, g=g, g_ema=g_ema, d_img=d_img, d_seg=d_seg,
        g_optim=adam(g, g_ratio), d_img_optim=adam(d_img, d_ratio), d_seg_optim=adam(d_seg, d_ratio),
        seg_gan_loss=tr.GANLoss(gan_mode="hinge", tensor=tensor), mean_path_length=0,
        accum=0.5 ** (32 / (10 * 1000)))


def stage1_iteration(tr, s, batch, d_regularize: bool, g_regularize: bool):
    """One pass of the body of train() in train_seg_gan.py (its i % d_reg_every / g_reg_every
    tests given as flags), with the official functions."""
    args, device, loss_dict = s.args, s.device, {}
    real_img, seg_img, seg_mask = (batch[k].detach() for k in ("image", "seg_image", "seg_mask"))
    generator, d_img, d_seg, seg_gan_loss = s.g, s.d_img, s.d_seg, s.seg_gan_loss
    r1_img_loss = r1_seg_loss = path_loss = path_lengths = torch.tensor(0.0, device=device)

    # Step 1: Dr
    tr.requires_grad(generator, False)
    tr.requires_grad(d_img, True)
    tr.requires_grad(d_seg, False)
    fake_img, fake_seg = generator(tr.mixing_noise(args.batch, args.latent, args.mixing, device))
    fake_seg = fake_seg.detach()
    fake_img_pred = d_img(fake_img)
    real_img_pred = d_img(real_img)
    d_img_loss = tr.d_logistic_loss(real_img_pred, fake_img_pred)
    loss_dict.update(d_img=d_img_loss, d_img_real_score=real_img_pred.mean(), d_img_fake_score=fake_img_pred.mean())
    d_img.zero_grad()
    d_img_loss.backward()
    s.d_img_optim.step()

    # Step 2: Dm
    tr.requires_grad(generator, False)
    tr.requires_grad(d_img, False)
    tr.requires_grad(d_seg, True)
    fake_img, fake_seg = generator(tr.mixing_noise(args.batch, args.latent, args.mixing, device))
    fake_seg_pred = tr.prep_dseg_output(args, d_seg(tr.prep_dseg_input(args, fake_img, fake_seg, is_real=False)))
    real_seg_pred = tr.prep_dseg_output(args, d_seg(tr.prep_dseg_input(args, seg_img, seg_mask, is_real=True)))
    d_seg_loss = (seg_gan_loss(fake_seg_pred, False, for_discriminator=True).mean()
                  + seg_gan_loss(real_seg_pred, True, for_discriminator=True).mean()) / 2.0
    loss_dict.update(d_seg=d_seg_loss, d_seg_real_score=sum(p[-1].mean() for p in real_seg_pred) / 3.0,
                     d_seg_fake_score=sum(p[-1].mean() for p in fake_seg_pred) / 3.0)
    d_seg.zero_grad()
    d_seg_loss.backward()
    s.d_seg_optim.step()

    if d_regularize:  # lazy R1 on Dr, then on Dm
        real_img.requires_grad = True
        real_pred = d_img(real_img)
        r1_img_loss = tr.d_r1_loss(real_pred, real_img)
        d_img.zero_grad()
        (args.r1 / 2 * r1_img_loss * args.d_reg_every + 0 * real_pred[0]).backward()
        s.d_img_optim.step()

        real_img_seg = tr.prep_dseg_input(args, seg_img, seg_mask, is_real=True)
        real_img_seg.requires_grad = True
        real_pred = tr.prep_dseg_output(args, d_seg(real_img_seg), use_feat=False)
        real_pred = real_pred[0][-1].mean() + real_pred[1][-1].mean() + real_pred[2][-1].mean()
        r1_seg_loss = tr.d_r1_loss(real_pred, real_img_seg)
        d_seg.zero_grad()
        (args.r1 / 2 * r1_seg_loss * args.d_reg_every + 0 * real_pred).backward()
        s.d_seg_optim.step()
    loss_dict.update(r1_img=r1_img_loss, r1_seg=r1_seg_loss)

    # Step 3: G
    tr.requires_grad(generator, True)
    tr.requires_grad(d_img, False)
    tr.requires_grad(d_seg, False)
    fake_img, fake_seg = generator(tr.mixing_noise(args.batch, args.latent, args.mixing, device))
    fake_img_pred = d_img(fake_img)
    fake_seg_pred = tr.prep_dseg_output(
        args, d_seg(tr.prep_dseg_input(args, fake_img.detach(), fake_seg, is_real=False)), use_feat=True)
    real_seg_pred = tr.prep_dseg_output(args, d_seg(tr.prep_dseg_input(args, seg_img, seg_mask, is_real=True)))
    g_img_loss = tr.g_nonsaturating_loss(fake_img_pred)
    g_seg_adv_loss = seg_gan_loss(fake_seg_pred, True, for_discriminator=False).mean()
    g_seg_feat_loss = 0.0
    for fake, real in zip(fake_seg_pred, real_seg_pred):  # D_weights 1/3, feat_weights 1
        for j in range(len(fake) - 1):
            g_seg_feat_loss += 1.0 / 3.0 * 1.0 * F.l1_loss(fake[j], real[j].detach()) * args.lambda_dseg_feat
    g_loss = g_img_loss + g_seg_adv_loss + g_seg_feat_loss
    loss_dict.update(g_img=g_img_loss, g_seg_adv=g_seg_adv_loss, g_seg_feat=g_seg_feat_loss, g=g_loss)
    generator.zero_grad()
    g_loss.backward()
    s.g_optim.step()

    if g_regularize:  # lazy path length on batch / path_batch_shrink
        path_batch_size = max(1, args.batch // args.path_batch_shrink)
        fake_img, latents = generator(tr.mixing_noise(path_batch_size, args.latent, args.mixing, device),
                                      return_latents=True)
        path_loss, s.mean_path_length, path_lengths = tr.g_path_regularize(fake_img, latents, s.mean_path_length)
        generator.zero_grad()
        weighted_path_loss = args.path_regularize * args.g_reg_every * path_loss
        if args.path_batch_shrink:
            weighted_path_loss += 0 * fake_img[0, 0, 0, 0]
        weighted_path_loss.backward()
        s.g_optim.step()
        tr.reduce_sum(s.mean_path_length).item() / tr.get_world_size()
    loss_dict.update(path=path_loss, path_length=path_lengths.mean())

    tr.accumulate(s.g_ema, generator, s.accum)
    for v in tr.reduce_loss_dict(loss_dict).values():  # the official reads every logged loss with .item()
        v.mean().item()
    sync(device)


def bench_stage1(a, m) -> dict:
    tr = m["semanticGAN.train_seg_gan"]
    s, batch = build_stage1(tr, a), random_batch(a)
    variants = {"plain": (False, False), "r1": (True, False), "path": (False, True)}
    stats = {v: time_calls(lambda f=flags: stage1_iteration(tr, s, batch, *f), a.repeats, a.warmup)
             for v, flags in variants.items()}
    ms = {v: st["median"] for v, st in stats.items()}
    params = {"g": n_params(s.g), "d_img": n_params(s.d_img), "d_seg": n_params(s.d_seg)}
    return row(a, amortised_iteration(ms, s.args.d_reg_every, s.args.g_reg_every), stats["plain"],
               timings_ms=stats, ms_variants=ms, params=params)


# ---- stage 2: semanticGAN/train_enc.py -------------------------------------------------------

def build_encoder(te, a):
    """Frozen G (eval, random weights instead of the checkpoint), LPIPS, FPN encoder and the two
    Ranger optimisers as train_enc.py's __main__ builds them."""
    args = argparse.Namespace(**ENCODER, seg_dim=a.seg_dim)
    g_ema = build_generator(te, a)
    g_ema.eval()
    percept = perceptual_loss(te.lpips, a.device, use_gpu=False, gpu_ids=[0]) if a.lpips else None
    encoder = te.FPNEncoder(input_dim=3, n_latent=g_ema.n_latent).to(a.device)
    encoder.eval()  # the official loop's first validate() / sample_val_viz_imgs() leave it in eval mode
    if a.seg_dim == 1:
        ce, dice = te.SoftBinaryCrossEntropyLoss(tau=0.3), te.DiceLoss(sigmoid_tau=0.3, include_bg=True)
    else:
        ce, dice = te.SoftmaxLoss(tau=0.1), te.DiceLoss(sigmoid_tau=0.3)
    return types.SimpleNamespace(
        args=args, device=a.device, g=g_ema, percept=percept, e=encoder, ce=ce, dice=dice, i=0,
        label_optim=te.Ranger(encoder.parameters(), lr=args.lr),
        unlabel_optim=te.Ranger(encoder.parameters(), lr=args.lr))


def lpips_term(s, x, y):
    """The official LPIPS distance's mean, or 0 with --no-lpips."""
    return s.percept(x, y).mean() if s.percept is not None else torch.zeros((), device=s.device)


def encoder_iteration(te, s, batch):
    """One pass of the body of train() in train_enc.py."""
    args, loss_dict, generator, encoder = s.args, {}, s.g, s.e
    real_img, seg_img, seg_mask = (batch[k].detach() for k in ("image", "seg_image", "seg_mask"))
    te.requires_grad(generator, False)
    te.requires_grad(encoder, True)

    # Step 1: unlabeled images
    fake_img, fake_seg = generator([encoder(real_img)], input_is_latent=True)
    fake_seg = fake_seg.detach()
    mse, lpips = F.mse_loss(fake_img, real_img), lpips_term(s, fake_img, real_img)
    e_unlabel_loss = mse * args.lambda_unlabel_mse + lpips * args.lambda_unlabel_lpips
    loss_dict.update(e_unlabel_mse=mse, e_unlabel_lpips=lpips, e_unlabel_loss=e_unlabel_loss)
    encoder.zero_grad()
    e_unlabel_loss.backward()
    te.clip_grad_norm_(encoder.parameters(), args.unlabel_grad_clip)
    s.unlabel_optim.step()
    te.update_learning_rate(args, s.i, s.unlabel_optim)

    # Step 2: labeled images
    fake_img, fake_seg = generator([encoder(seg_img)], input_is_latent=True)
    if args.seg_dim == 1:
        seg_mask = (seg_mask + 1.0) / 2.0
        ce, dice = s.ce(fake_seg, seg_mask), s.dice(fake_seg, seg_mask)
    else:
        ce, dice = s.ce(fake_seg, torch.argmax(seg_mask, dim=1)), s.dice(fake_seg, (seg_mask + 1.0) / 2.0)
    mse, lpips = F.mse_loss(fake_img, seg_img), lpips_term(s, fake_img, seg_img)
    e_label_loss = (ce * args.lambda_label_ce + dice * args.lambda_label_dice + mse * args.lambda_label_mse
                    + lpips * args.lambda_label_lpips)
    loss_dict.update(e_label_mse=mse, e_label_lpips=lpips, e_label_ce=ce, e_label_dice=dice,
                     e_label_loss=e_label_loss)
    encoder.zero_grad()
    e_label_loss.backward()
    te.clip_grad_norm_(encoder.parameters(), args.label_grad_clip)
    s.label_optim.step()
    te.update_learning_rate(args, s.i, s.label_optim)

    for v in te.reduce_loss_dict(loss_dict).values():
        v.mean().item()
    s.i += 1
    sync(s.device)


def bench_encoder(a, m) -> dict:
    te = m["semanticGAN.train_enc"]
    s, batch = build_encoder(te, a), random_batch(a)
    stats = time_calls(lambda: encoder_iteration(te, s, batch), a.repeats, a.warmup)
    return row(a, stats["median"], stats, params={"g": n_params(s.g), "e": n_params(s.e)})


# ---- test-time segmentation: semanticGAN/inference.py ----------------------------------------

def segment_image(inf, s, target, steps: int, steps_run: int):
    """inference.py's per-image body for one target (1, 3, H, W): the first `steps_run` of `steps`
    optimisation steps (lr schedule of the full run), then the final G forward and argmax."""
    args, g_ema, encoder = s.args, s.g, s.e
    noises = g_ema.make_noise()
    for noise in noises:
        noise.requires_grad = True
    with torch.no_grad():
        latent_in = encoder(target)
        latent_enc_init = latent_in.clone().detach()
    latent_in.requires_grad = True
    optimizer = optim.Adam([latent_in] + noises, lr=args.lr)
    latent_path = []
    for i in range(steps_run):
        optimizer.param_groups[0]["lr"] = inf.get_lr(i / steps, args.lr, args.lr_rampdown, args.lr_rampup)
        img_gen, img_seg = g_ema([latent_in], input_is_latent=True, noise=noises)
        batch, channel, height, width = img_gen.shape
        if height > 256:
            factor = height // 256
            img_gen = img_gen.reshape(batch, channel, height // factor, factor, width // factor, factor).mean([3, 5])
        p_loss = lpips_term(s, img_gen, target)
        mse_loss = F.mse_loss(img_gen, target)
        n_loss = inf.noise_regularize(noises)
        encoder_init_loss = F.mse_loss(latent_in, latent_enc_init)
        encoder_loss = F.mse_loss(latent_in, encoder(img_gen).detach())
        loss = (p_loss + args.noise_regularize * n_loss + mse_loss * args.lambda_mse
                + encoder_loss * args.lambda_encoder + encoder_init_loss * args.lambda_encoder_init)
        for v in (p_loss, n_loss, mse_loss, encoder_loss, encoder_init_loss):  # the official prints these
            v.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        inf.noise_normalize_(noises)
        latent_path.append(latent_in.detach().clone())
    with torch.no_grad():
        img_gen, img_seg = g_ema([latent_path[-1]], input_is_latent=True, noise=noises)
        torch.argmax(img_seg, dim=1).cpu()


def bench_segment(a, m) -> dict:
    inf = m["semanticGAN.inference"]
    g_ema = build_generator(inf, a)
    g_ema.eval()
    encoder = m["models.encoder_model"].FPNEncoder(input_dim=3, n_latent=g_ema.n_latent).to(a.device)
    encoder.eval()
    percept = perceptual_loss(m["models.lpips"], a.device, use_gpu=a.device.startswith("cuda")) if a.lpips else None
    s = types.SimpleNamespace(args=argparse.Namespace(**INFERENCE), device=a.device, g=g_ema, e=encoder,
                              percept=percept)
    steps_run, n_images = a.steps_timed or a.steps, a.images or a.batch
    images = (torch.rand((n_images, 1, 3, a.size, a.size), generator=torch.Generator().manual_seed(0)) * 2 - 1
              ).to(a.device)

    def run():
        for target in images:
            segment_image(inf, s, target, a.steps, steps_run)
        sync(a.device)
    stats = time_calls(run, a.repeats, a.warmup)
    scale = a.steps / steps_run  # to the full --steps optimisation
    stats = {k: [t * scale for t in v] if k == "values" else v * scale for k, v in stats.items()}
    return row(a, stats["median"], stats, batch=n_images, steps=a.steps, steps_timed=steps_run,
               seconds_per_image=stats["median"] / 1e3 / n_images,
               params={"g": n_params(g_ema), "e": n_params(encoder)})


# ---- rows and command line -------------------------------------------------------------------

def row(a, ms_iteration, stats, batch=None, **extra) -> dict:
    """The result dict shared with ours.py (common.format_row prints it); the spread is that of
    `stats` (a time_calls result)."""
    batch = batch or a.batch
    if a.device.startswith("cuda"):
        device, source, mem = f"{torch.cuda.get_device_name()} (cuda)", "torch.cuda.max_memory_allocated", \
            torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        device, source, mem = "cpu", "process max RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10
    return {"impl": "official", "what": a.what, "size": a.size, "channel_multiplier": a.channel_multiplier,
            "batch": batch, "seg_dim": a.seg_dim, "dtype": "float32", "lpips": a.lpips,
            "ms_iteration": ms_iteration, "spread_ms": spread(stats),
            "timings_ms": stats, "images_per_s": batch / (ms_iteration / 1e3),
            "peak_memory_mib": mem, "memory_source": source, "device": device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "repeats": a.repeats, "warmup": a.warmup,
            **({"tf32": a.tf32} if a.device.startswith("cuda") else {}), **extra}


BENCHES = {"stage1": bench_stage1, "encoder": bench_encoder, "segment": bench_segment}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, required=True, help="checkout of nv-tlabs/semanticGAN_code")
    p.add_argument("--what", choices=sorted(BENCHES), default="stage1")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seg-dim", type=int, default=6)
    p.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True,
                   help="encoder / segment: the LPIPS terms")
    p.add_argument("--images", type=int, help="segment: images, one after another, per timed call (default --batch)")
    p.add_argument("--steps", type=int, default=100, help="segment: optimisation steps per image")
    p.add_argument("--steps-timed", type=int, default=0, help="segment: steps actually run (0 = --steps), scaled")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tf32", action="store_true",
                   help="cuda: convolutions and matmuls in TF32 (default: both IEEE fp32; torch's own default is "
                        "TF32 convolutions, fp32 matmuls)")
    p.add_argument("--json", help="append the result row to this JSON list file")
    return p


def run(a) -> dict:
    """Seed, import the official modules for `a.what` from `a.official` and run its benchmark."""
    random.seed(0)
    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = a.what != "segment"  # as train_seg_gan.py / train_enc.py set it
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = a.tf32  # as ours.py --tf32
    modules = import_official(a.official, MODULES[a.what], device=a.device)
    return BENCHES[a.what](a, modules)


def summary(r) -> str:
    """The second output line: device, threads, per-variant / per-image times, parameter counts."""
    parts = [f"{r['device']}, torch {r['torch']}, {r['threads']} threads"]
    if "ms_variants" in r:
        parts.append("ms plain/r1/path " + "/".join(f"{v:.0f}" for v in r["ms_variants"].values()))
    if "steps" in r:
        timed = f" (timed {r['steps_timed']}, scaled)" if r["steps_timed"] != r["steps"] else ""
        parts.append(f"{r['seconds_per_image']:.2f} s/image at {r['steps']} steps{timed}")
    parts.append("params " + ", ".join(f"{k} {v:,d}" for k, v in r["params"].items()))
    return "; ".join(parts)


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    r = run(a)
    report(r, a.json)
    print("  " + summary(r), flush=True)
    return r


if __name__ == "__main__":
    main()
