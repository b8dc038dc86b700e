//! The controller's allocator and its settings: a module of `main.rs` and, by path, of the
//! engine's benchmark, so the benchmark allocates as the controller does.

/// jemalloc rather than the system allocator: the controller allocates and frees a watch
/// event's objects on every status write, and glibc's malloc spent a sixth of its CPU there and
/// kept freed memory resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts: freed pages go back to the system after a second
/// (not ten); two arenas, as a container sees all of its node's cores and jemalloc would keep
/// four arenas per core (each thread has its own cache in front of them anyway).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0";
