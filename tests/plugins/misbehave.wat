;; An inference plugin that misbehaves on request, by the first input value:
;; 1 = loop forever, 2 = allocate memory without bound, 3 = answer with a view
;; outside memory, 4 = trap; anything else = the identity.
(module
  (memory (export "memory") 1)
  (func (export "sluice_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "infer") (param $h i32) (param $in i32) (param $out i32) (result i32)
    (local $what f32)
    (local.set $what (f32.load (i32.load (local.get $in))))
    (if (f32.eq (local.get $what) (f32.const 1))
      (then (loop $forever (br $forever))))
    (if (f32.eq (local.get $what) (f32.const 2))
      (then (loop $more (drop (memory.grow (i32.const 16))) (br $more))))
    (if (f32.eq (local.get $what) (f32.const 3))
      (then
        (memory.copy (local.get $out) (local.get $in) (i32.const 28))
        (i32.store (local.get $out) (i32.const 0x7ffffff0))
        (return (i32.const 0))))
    (if (f32.eq (local.get $what) (f32.const 4))
      (then unreachable))
    (memory.copy (local.get $out) (local.get $in) (i32.const 28))
    (i32.const 0))
  (func (export "free") (param i32)))
