;; An inference plugin (the TensorView ABI, docs/wasm-abi.md) computing
;; y = a*x + b over f32 tensors, in place. The model is 8 bytes: a and b as
;; little-endian f32. `init` refuses any other model (error -1), `infer`
;; refuses a tensor that is not f32 (error 2).
(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (global $a (mut f32) (f32.const 1))
  (global $b (mut f32) (f32.const 0))

  ;; A bump allocator, 8-aligned, growing memory when it must; 0 on failure.
  (func $alloc (export "sluice_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $bump))
    (local.set $end (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7))
                             (i32.const -8)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.div_u (i32.sub (local.get $end) (local.get $have))
                                                     (i32.const 65536))
                                          (i32.const 1)))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $bump (local.get $end))
    (local.get $p))

  (func (export "init") (param $ptr i32) (param $len i32) (result i32)
    (if (i32.ne (local.get $len) (i32.const 8)) (then (return (i32.const -1))))
    (global.set $a (f32.load (local.get $ptr)))
    (global.set $b (f32.load offset=4 (local.get $ptr)))
    (i32.const 7))

  (func (export "infer") (param $h i32) (param $in i32) (param $out i32) (result i32)
    (local $p i32) (local $end i32)
    (if (i32.ne (i32.load offset=24 (local.get $in)) (i32.const 0)) (then (return (i32.const 2))))
    (local.set $p (i32.load (local.get $in)))
    (local.set $end (i32.add (local.get $p) (i32.load offset=4 (local.get $in))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (f32.store (local.get $p)
          (f32.add (f32.mul (f32.load (local.get $p)) (global.get $a)) (global.get $b)))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $next)))
    ;; The output view is the input view: same place, shape and dtype.
    (memory.copy (local.get $out) (local.get $in) (i32.const 28))
    (i32.const 0))

  (func (export "free") (param i32)))
