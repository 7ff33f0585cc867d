;; A stand-in for the key-auth policy, for machines that cannot build the real
;; plugin (no `wasm32-wasip2` standard library). `tests/corpus/compare` turns
;; this text into a component with the `wasmtime` Python package and uses it
;; only when `plugins/target/wasm32-wasip2/release/key_auth.wasm` is missing.
;;
;; It exports the `wicket:plugin/policy` world and does one thing: a request
;; whose `x-api-key` header is exactly `k-secret` continues unchanged (the key
;; is not stripped); any other request is answered 401. `init` ignores its
;; configuration and declares `on-request` only. That is all the corpus needs:
;; what is under test is the gateway's routing, not the plugin.
;;
;; Canonical ABI layouts used below (offsets in bytes, all little-endian):
;;   result<hooks, string>     0: tag (0 = ok)   4: hooks flags (bit 0 = on-request)
;;   option<list<u8>>          0: tag (1 = some) 4: ptr  8: len
;;   request-action (64 B)     0: tag (0 = continue, 1 = respond)  4: payload;
;;     continue(request-patch) all zero = the empty patch;
;;     respond(response)       4: status u16  8/12: headers ptr/len  16/20: body ptr/len
;;   response-action (24 B)    all zero = continue with the empty patch
(component
  (import "wicket:plugin/types@0.1.0" (instance $types
    (type $header-t (record (field "name" string) (field "value" (list u8))))
    (export "header" (type $header (eq $header-t)))
    (export "request" (type $request (sub resource)))
    (export "response-head" (type $response-head (sub resource)))
    (type $response-t (record (field "status" u16) (field "headers" (list $header)) (field "body" (list u8))))
    (export "response" (type $response (eq $response-t)))
    (type $hooks-t (flags "on-request" "on-response"))
    (export "hooks" (type $hooks (eq $hooks-t)))
    (type $upstream-error-t (enum "connect-failed" "timeout" "reset" "no-endpoint" "protocol"))
    (export "upstream-error" (type $upstream-error (eq $upstream-error-t)))
    (type $upstream-result-t (variant (case "status" u16) (case "error" $upstream-error) (case "skipped")))
    (export "upstream-result" (type $upstream-result (eq $upstream-result-t)))
    (type $upstream-outcome-t (record
      (field "result" $upstream-result)
      (field "latency-us" u64)
      (field "endpoint" (option string))))
    (export "upstream-outcome" (type $upstream-outcome (eq $upstream-outcome-t)))
    (type $request-patch-t (record
      (field "set-headers" (list $header))
      (field "remove-headers" (list string))
      (field "path" (option string))
      (field "query" (option string))
      (field "upstream" (option string))
      (field "response-headers" (list $header))))
    (export "request-patch" (type $request-patch (eq $request-patch-t)))
    (type $request-action-t (variant (case "continue" $request-patch) (case "respond" $response)))
    (export "request-action" (type $request-action (eq $request-action-t)))
    (type $response-patch-t (record
      (field "status" (option u16))
      (field "set-headers" (list $header))
      (field "remove-headers" (list string))))
    (export "response-patch" (type $response-patch (eq $response-patch-t)))
    (type $response-action-t (variant (case "continue" $response-patch) (case "replace" $response)))
    (export "response-action" (type $response-action (eq $response-action-t)))
    (export "[method]request.header"
      (func (param "self" (borrow $request)) (param "name" string) (result (option (list u8)))))
  ))
  (alias export $types "request" (type $request))
  (alias export $types "response-head" (type $response-head))
  (alias export $types "hooks" (type $hooks))
  (alias export $types "upstream-outcome" (type $upstream-outcome))
  (alias export $types "request-action" (type $request-action))
  (alias export $types "response-action" (type $response-action))
  (alias export $types "[method]request.header" (func $request-header))

  ;; Memory and the allocator live in their own module so that the import can
  ;; be lowered with them before the main module is instantiated.
  (core module $libc
    (memory (export "memory") 1)
    ;; Everything below 1024 is the main module's static data.
    (global $bump (export "bump") (mut i32) (i32.const 1024))
    (func (export "realloc") (param $old i32) (param $old-size i32) (param $align i32) (param $size i32) (result i32)
      (local $p i32)
      (local $end i32)
      (local.set $p (i32.and
        (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end (i32.add (local.get $p) (local.get $size)))
      (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
        (then
          (if (i32.eq
                (memory.grow (i32.add
                  (i32.shr_u (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16))) (i32.const 16))
                  (i32.const 1)))
                (i32.const -1))
            (then unreachable))))
      (global.set $bump (local.get $end))
      (if (local.get $old)
        (then (memory.copy (local.get $p) (local.get $old) (local.get $old-size))))
      (local.get $p)))
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))

  (core func $request-header-lowered
    (canon lower (func $request-header) (memory $mem) (realloc $realloc)))
  ;; A borrowed handle must be dropped before the export that received it returns.
  (core func $drop-request (canon resource.drop $request))
  (core func $drop-response-head (canon resource.drop $response-head))

  (core module $main
    (import "libc" "memory" (memory 1))
    (import "libc" "bump" (global $bump (mut i32)))
    (import "host" "request-header" (func $request-header (param i32 i32 i32 i32)))
    (import "host" "drop-request" (func $drop-request (param i32)))
    (import "host" "drop-response-head" (func $drop-response-head (param i32)))
    ;; init's answer: ok(hooks { on-request }).
    (data (i32.const 16) "\00\00\00\00\01\00\00\00")
    (data (i32.const 32) "x-api-key")
    (data (i32.const 48) "k-secret")
    ;; 64..127: continue with the empty patch (zero).
    ;; 128..191: respond 401, no headers, a short body.
    (data (i32.const 128) "\01\00\00\00\91\01\00\00\00\00\00\00\00\00\00\00\00\01\00\00\1c\00\00\00")
    ;; 192..215: on-response's continue with the empty patch (zero).
    ;; 224..235: the header call's return area.
    (data (i32.const 256) "{\22error\22:\22missing_api_key\22}\0a")
    (func (export "init") (param i32 i32) (result i32)
      (i32.const 16))
    (func (export "on-request") (param $req i32) (result i32)
      ;; Nothing outlives a call, so each request starts with an empty heap.
      (local $answer i32)
      (global.set $bump (i32.const 1024))
      (call $request-header (local.get $req) (i32.const 32) (i32.const 9) (i32.const 224))
      (call $drop-request (local.get $req))
      (local.set $answer (i32.const 128))
      (if (i32.load8_u (i32.const 224))
        (then (if (i32.eq (i32.load (i32.const 232)) (i32.const 8))
          (then (if (i64.eq (i64.load (i32.load (i32.const 228))) (i64.load (i32.const 48)))
            (then (local.set $answer (i32.const 64))))))))
      (local.get $answer))
    (func (export "on-response")
      (param $req i32) (param i32 i32 i64 i32 i32 i32) (param $resp i32) (result i32)
      (call $drop-request (local.get $req))
      (call $drop-response-head (local.get $resp))
      (i32.const 192)))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance
      (export "request-header" (func $request-header-lowered))
      (export "drop-request" (func $drop-request))
      (export "drop-response-head" (func $drop-response-head))))))

  (type $init-t (func (param "config" string) (result (result $hooks (error string)))))
  (type $on-request-t (func (param "request" (borrow $request)) (result $request-action)))
  (type $on-response-t (func
    (param "request" (borrow $request))
    (param "outcome" $upstream-outcome)
    (param "response" (borrow $response-head))
    (result $response-action)))
  (func $init (type $init-t)
    (canon lift (core func $main "init") (memory $mem) (realloc $realloc)))
  (func $on-request (type $on-request-t)
    (canon lift (core func $main "on-request") (memory $mem) (realloc $realloc)))
  (func $on-response (type $on-response-t)
    (canon lift (core func $main "on-response") (memory $mem) (realloc $realloc)))
  (export "init" (func $init))
  (export "on-request" (func $on-request))
  (export "on-response" (func $on-response))
)
