"""The fast CapsNet: FastCapsNet, the model of minicaps/nn/capsnet.py with its pieces swapped
for the fast ops; what build_model(config) builds (nn/registry.py), so what trains,
evaluates and predicts.

What changes against the reference composition, and only the speed and the rounding
change with it (tests/fast/test_reference_fast.py):
- the convolutions take im2col + GEMM in chunks of images or the DFT route
  (``conv_method``), and inside ``fixed_weights`` inference reuses one weights' spectrum
  (fast/network.py);
- predictions and routing run a chunk of the batch at a time on every core
  (fast.digit_capsules_forward), recomputing u_hat in the backward pass;
- ReLUs overwrite their input, the first convolution's dx is never made, and the backward
  pass of loss_and_grads drops each cache once used, so its memory comes back early;
- on the GPU the margin loss's, the lengths' and the mask's gradients are one kernel, the
  reconstruction loss's and the sigmoid's another (fused.py): that is why the backward
  pass is written again here, where the forward pass is MultiLabel's (nn/multi_label.py:
  CapsNet's stages composed, with K labels an image and the training loop's options);
- on the CPU, malloc keeps freed memory for the next step (backend.keep_freed_memory).
"""
from minicaps.nn.capsnet import CapsNet
from minicaps.nn.multi_label import MultiLabel, decoded_backward
from minicaps.fast import conv_fft
from minicaps.fast import (conv2d_forward, conv2d_backward, relu_forward, relu_backward,
                           dense_forward, dense_backward, mask_forward, mask_backward,
                           digit_capsules_forward, digit_capsules_backward)
from minicaps.fast.fused import (primary_capsules_forward, primary_capsules_backward,
                                 sigmoid_forward, margin_length_backward,
                                 recon_sigmoid_backward)
from minicaps.fast.network import FastNetwork
from minicaps.fast import plans

CONV_METHODS = plans.POLICIES


class FastCapsNet(FastNetwork, MultiLabel, CapsNet):
    """FastCapsNet(config, seed=0, dtype="float32", device=None, params=None, conv_method=None).

    ``conv_method``, how the routes are chosen (fast/plans.py): "measure" times the
    candidates (the primary capsules' convolution through im2col + GEMM or the DFT, the
    digit capsules' chunk size) the first time the network meets a batch size, for
    training and for inference apart, and keeps the fastest (in the plan file too);
    "rules" or "auto" takes the fixed rules (the DFT from about 15 images per batch,
    chunks of 16); "gemm" or "fft" forces that route for the primary capsules. None
    (the default): $MINICAPS_ROUTES, else "measure". On a GPU the rules. It changes the
    speed and the rounding, never the function, so it is not part of the config or of
    checkpoints; ``plans_used()`` says what a network chose.

    A model on the CPU asks malloc to keep freed memory for reuse
    (backend.keep_freed_memory: a batch-128 training step in 0.74-0.85x the time, the
    process's memory stays at its high-water mark; $MINICAPS_KEEP_FREED_MEMORY=0 turns it off).
    """

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None,
                 conv_method=None):
        policy = plans.default_policy() if conv_method is None else plans.canonical(conv_method)
        if policy is None:
            raise ValueError(f"conv_method must be one of {', '.join(CONV_METHODS)} or "
                             f"'rules', got {conv_method!r}")
        self.conv_method = policy
        super().__init__(config, seed, dtype, device, params)
        self._fixed = {}      # conv name -> (weights copy, spectrum), inside fixed_weights()

    def _place_on(self, device):
        """FastNetwork._place_on, and the plans forgotten: they were for the other device."""
        super()._place_on(device)
        self._plans = {}      # (batch, training) -> the plan of routes chosen
        self._ran = {}        # (batch, training) -> the routes that ran (plans_used)
        self._plan_now = None

    # ------------------------------------------------------------ routes (fast/plans.py)
    def plan_for(self, batch, training):
        """The routes for a batch of ``batch`` images, training or inference: chosen once
        per (batch, training) by the network's policy (conv_method), then kept."""
        key = (int(batch), bool(training))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._choose_plan(*key)
        return plan

    def _choose_plan(self, batch, training):
        cfg = self.config
        x_shape = (batch, *cfg.conv1_out, cfg.conv1_channels)
        w_shape = self.params["primary.W"].shape
        measure = self.conv_method == "measure" and self.device == "cpu"
        if not measure or batch > plans.MAX_TIMED_BATCH:
            plan = plans.rules_plan(x_shape, w_shape, cfg.primary_stride, training,
                                    "auto" if self.conv_method == "measure" else self.conv_method)
            if measure:
                plan["how"] = f"the fixed rules (batches over {plans.MAX_TIMED_BATCH} are not timed)"
            return plan
        shapes = {name: list(value.shape) for name, value in self.params.items()}
        shapes.update(routing_iters=cfg.routing_iters, routing_grad=cfg.routing_grad,
                      primary_stride=cfg.primary_stride, input=list(cfg.input_shape))
        key = plans.plan_key(shapes, batch, training, self.dtype)
        plan = plans.known_plan(key)
        if plan is None:
            plan = plans.measure_plan(self, batch, training)
            plans.keep_plan(key, plan)
        return plan

    def adopt_plans(self, routes):
        """Take the routes a checkpoint recorded (plans_used: {"training, batch 100": {...}})
        as this network's plans, so that a resumed run computes as the original did
        whatever the plan file now says; entries that are not plans are left out."""
        if not isinstance(routes, dict):
            return
        for name, plan in routes.items():
            mode, _, batch = str(name).partition(", batch ")
            if mode in ("training", "inference") and batch.isdigit() and plans.valid_plan(plan):
                self._plans[(int(batch), mode == "training")] = dict(
                    plan, how="the checkpoint's")

    def plans_used(self):
        """{"training, batch 100": plan, ...}: the routes this network has run with (in
        inference the convolution's route is the one fixed_weights' spectrum allowed)."""
        return {f"{'training' if t else 'inference'}, batch {n}": plan
                for (n, t), plan in sorted(self._ran.items())}

    def _wants_spectrum(self, name, x_shape, W, stride, batch_size):
        """fixed_weights: make the weights' spectrum when the block's batches (of
        ``batch_size``, at most MAX_TIMED_BATCH when not given) are faster through the DFT
        by their inference plan, the spectrum's own time counted once (the rules:
        conv_fft.fft_pays over all its images)."""
        if name != "primary" or self.conv_method == "auto" or self.device != "cpu":
            return super()._wants_spectrum(name, x_shape, W, stride, batch_size)
        n = x_shape[0]
        batch = max(1, min(n, batch_size or plans.MAX_TIMED_BATCH))
        return plans.spectrum_pays(self.plan_for(batch, training=False), -(-n // batch))

    def _build_options(self):
        return {"conv_method": self.conv_method}

    def _window_floats_per_image(self):
        return 0              # the windows go through the GEMMs a chunk of images at a time

    def _convolution_floats(self):
        """The weights' spectrum of each convolution that may take the DFT route
        (conv_fft.fft_pays: 16 input channels or more), 2 U Vf C O floats (100 MB for
        the paper's primary capsules), and the intermediate that makes it. Measured on
        the paper's network (tracemalloc, float32): what a step holds beyond its images
        is 178 MB when training, 134 MB for inference; batch_bytes, with the copies of
        the parameters and its margin, says 251 and 217."""
        if self.conv_method == "gemm":
            return 0
        total = 0
        for name, x_shape, stride in self._spectrum_inputs(1):
            kh, kw, C, O = self.params[f"{name}.W"].shape
            if C >= 16:
                U, V, _, _ = conv_fft.fft_grid(x_shape, (kh, kw, C, O), stride)
                total += (2 * U + 2 * kh) * (V // 2 + 1) * C * O
        return total

    def _spectrum_inputs(self, n_images):
        if self.conv_method == "gemm":
            return []
        cfg = self.config
        return [("conv1", (n_images,) + tuple(cfg.input_shape), cfg.conv1_stride),
                ("primary", (n_images, *cfg.conv1_out, cfg.conv1_channels), cfg.primary_stride)]

    # ------------------------------------------------------------ forward / backward
    def primary_capsules(self, x, training=False):
        """conv1 -> ReLU -> primary conv -> squash: u (N, I, D_in) and the caches
        (x already checked, on the model's device). ``training``: a backward pass
        follows (the convolutions may then take the DFT route; without it they take
        it where fixed_weights() made the weights' spectrum)."""
        cfg, p, caches = self.config, self.params, {}
        spectrum = (lambda name: None) if training else self._fixed_spectrum
        plan = self.plan_for(x.shape[0], training)
        self._plan_now = (x.shape[0], plan)            # for digit_capsules, next
        first = "gemm" if self.conv_method == "gemm" else "auto"
        h, caches["conv1"] = conv2d_forward(x, p["conv1.W"], p["conv1.b"], cfg.conv1_stride,
                                            method=first, training=training,
                                            spectrum=spectrum("conv1"))
        h, caches["relu1"] = relu_forward(h, out=h)
        fixed = spectrum("primary")
        # the rules: conv.py's "auto"; measured: in training the plan's route, in inference
        # the DFT where fixed_weights made the spectrum (it asked the plan), else the GEMM
        method = self.conv_method
        if method == "measure":
            method = plan["primary"] if training else "fft" if fixed is not None else "gemm"
        h, caches["primary"] = conv2d_forward(h, p["primary.W"], p["primary.b"], cfg.primary_stride,
                                              method=method, training=training, spectrum=fixed)
        ran = caches["primary"][0]
        self._ran[(x.shape[0], bool(training))] = plan if plan["primary"] == ran else dict(
            plan, primary=ran, how=f"{plan['how']}; the convolution as fixed_weights allowed")
        if cfg.primary_relu:
            h, caches["relu2"] = relu_forward(h, out=h)
        u, caches["caps"] = primary_capsules_forward(h, cfg.primary_dims, cfg.squash_eps)
        return u, caches

    def digit_capsules(self, u, coupling=None):
        """Predictions (eq. 2) and routing (Procedure 1), in chunks of the batch."""
        cfg = self.config
        batch, plan = self._plan_now or (None, None)
        if batch != u.shape[0]:                        # not after primary_capsules
            plan = self.plan_for(u.shape[0], training=False)
        return digit_capsules_forward(u, self.params["digit.W"], cfg.routing_iters,
                                      cfg.routing_grad, cfg.squash_eps, coupling,
                                      chunk=plan["capsule_chunk"])

    def iteration_couplings(self, digit_cache):
        """CapsNet.iteration_couplings from the chunks' caches: each iteration's c of
        every chunk, joined (only when asked: forward(keep_couplings=True))."""
        _, chunks = digit_cache
        steps = [chunk_steps for _, _, (chunk_steps, _) in chunks]
        if len(steps) == 1:
            return [c for c, _, _ in steps[0]]
        return [self.xp.concatenate([s[t][0] for s in steps]) for t in range(len(steps[0]))]

    def decode(self, v, mask):
        """The decoder of CapsNet.decode, its ReLUs in place and its sigmoid one kernel on
        the GPU (fused.sigmoid_forward)."""
        cfg, p, caches = self.config, self.params, {}
        if not cfg.use_decoder:
            raise ValueError("this network has no decoder (use_decoder=False)")
        r, caches["mask"] = mask_forward(v, mask)
        n_dec = len(cfg.decoder_sizes) + 1
        for k in range(1, n_dec + 1):
            r, caches[f"dec{k}"] = dense_forward(r, p[f"dec{k}.W"], p[f"dec{k}.b"])
            if k < n_dec:
                r, caches[f"dec{k}.relu"] = relu_forward(r, out=r)
        r, caches["sigmoid"] = sigmoid_forward(r)
        return r, caches

    def backward(self, caches, free=False):
        """Gradients of the total loss for every parameter, from forward's caches.
        free=True drops each cache from the dict once it is used, so its memory comes
        back during the backward pass (loss_and_grads does this). On the GPU the margin
        loss's, the lengths' and the mask's gradients are one kernel, the reconstruction
        loss's and the sigmoid's another (fused.py)."""
        cfg, grads = self.config, {}
        take = caches.pop if free else caches.__getitem__
        margin, lengths = take("margin"), take("lengths")
        dv = None
        if cfg.use_decoder:
            sigmoid = take("sigmoid")
            dr = recon_sigmoid_backward(cfg.recon_weight, take("recon"), sigmoid)
            n_dec = len(cfg.decoder_sizes) + 1
            for k in range(n_dec, 0, -1):
                if k < n_dec:
                    dr = relu_backward(dr, take(f"dec{k}.relu"), out=dr)
                dr, grads[f"dec{k}.W"], grads[f"dec{k}.b"] = dense_backward(dr, take(f"dec{k}"))
            mask, per_image = take("mask"), take("decoded_per_image")
            if per_image == 1:                  # dv of the margin, the lengths and the mask
                dv = margin_length_backward(margin, lengths, dr, mask)
            else:
                dv = margin_length_backward(margin, lengths) + decoded_backward(
                    mask_backward(dr, mask), per_image)
        if dv is None:
            dv = margin_length_backward(margin, lengths)
        du, grads["digit.W"] = digit_capsules_backward(dv, take("digit"))
        dh = primary_capsules_backward(du, take("caps"))
        del du
        if cfg.primary_relu:
            dh = relu_backward(dh, take("relu2"), out=dh)
        dh, grads["primary.W"], grads["primary.b"] = conv2d_backward(dh, take("primary"))
        dh = relu_backward(dh, take("relu1"), out=dh)
        _, grads["conv1.W"], grads["conv1.b"] = conv2d_backward(dh, take("conv1"), need_dx=False)
        return {name: grads[name] for name in self.params}
