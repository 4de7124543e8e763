;; A proxy-wasm filter that adds `x-wasm-filter: on` to every response, and
;; misbehaves when the request carries `x-misbehave`: with value `loop` it
;; loops forever, `grow` grows memory without bound, `trap` traps.
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-wasm-filter")
  (data (i32.const 32) "on")
  (data (i32.const 48) "x-misbehave")
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (local.get $n)))
    ;; Reuse the same area once past 32 KiB: values are read at once.
    (if (i32.gt_u (global.get $bump) (i32.const 32768))
      (then (global.set $bump (i32.const 4096)) (local.set $p (i32.const 4096))
            (global.set $bump (i32.add (i32.const 4096) (local.get $n)))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $v i32)
    ;; value pointer at 64, size at 68
    (if (i32.eqz (call $get (i32.const 0) (i32.const 48) (i32.const 11) (i32.const 64) (i32.const 68)))
      (then
        (local.set $v (i32.load8_u (i32.load (i32.const 64))))
        (if (i32.eq (local.get $v) (i32.const 108)) ;; 'l'
          (then (loop $forever (br $forever))))
        (if (i32.eq (local.get $v) (i32.const 103)) ;; 'g'
          (then (loop $more (drop (memory.grow (i32.const 16))) (br $more))))
        (if (i32.eq (local.get $v) (i32.const 116)) ;; 't'
          (then unreachable))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 13) (i32.const 32) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
