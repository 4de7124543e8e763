;; A proxy-wasm filter that asks for a 20 ms tick in proxy_on_configure and
;; logs "tick" on each; and on each response calls host functions Sluice does
;; not offer (an HTTP callout, a metric), adding `x-unimplemented: yes` when
;; both answered UNIMPLEMENTED (12) instead of trapping.
(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $metric (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "tick")
  (data (i32.const 32) "x-unimplemented")
  (data (i32.const 48) "yes")
  (data (i32.const 64) "upstream")
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 20)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 4))))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (if (i32.and
          (i32.eq (call $http_call (i32.const 64) (i32.const 8) (i32.const 0) (i32.const 0)
                                   (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                                   (i32.const 1000) (i32.const 128))
                  (i32.const 12))
          (i32.eq (call $metric (i32.const 0) (i32.const 64) (i32.const 8) (i32.const 132))
                  (i32.const 12)))
      (then (drop (call $add (i32.const 2) (i32.const 32) (i32.const 15) (i32.const 48) (i32.const 3)))))
    (i32.const 0)))
