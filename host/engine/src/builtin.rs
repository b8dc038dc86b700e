//! The built-in probes, compiled from `probes/` by the build and embedded.

/// A probe shipped inside the controller.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// Name used in `activityProbe.module` and by the harness.
    pub name: &'static str,
    /// The component.
    pub component: &'static [u8],
}

/// Every built-in probe.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "jupyter",
        component: include_bytes!(env!("PROBE_JUPYTER_WASM")),
    },
    Builtin {
        name: "exec-script",
        component: include_bytes!(env!("PROBE_EXEC_SCRIPT_WASM")),
    },
    Builtin {
        name: "nvidia-gpu",
        component: include_bytes!(env!("PROBE_NVIDIA_GPU_WASM")),
    },
];

/// A built-in probe by name.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}
