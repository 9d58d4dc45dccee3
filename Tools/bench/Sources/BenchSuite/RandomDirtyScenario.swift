import Harness

/// memtouch `write=random`: every pass rewrites 64 MiB with fresh incompressible data.
struct MigrateDirtyRandom: MigrationScenario {
    let name = "migrate-dirty-random"
    let title = "Migrate while memtouch rewrites 64 MiB with fresh incompressible data (256 MiB VM, 50 ms target)"
    let metrics = MigrateDirty().metrics
    let notes = ["Guest: memtouch.elf `size=64M write=random` in a 256 MiB VM: each pass rewrites every word of "
                 + "the region with a fresh xorshift64 sequence (seeded by pass and page) in a ring-3 loop, after "
                 + "checking every word of the previous pass — so LZ4 does not help, and a stale or torn page "
                 + "fails the guest (FAIL on the target → the run fails). A run that has not completed after the "
                 + "time limit counts as not converged."] + migrationNotes
    let cmdline = "size=64M write=random passes=0 heartbeat-ms=500"

    func params(_ env: BenchEnvironment) -> JSONObject {
        ["image": .string("memtouch.elf"), "memory": .string("256M"), "cmdline": .string(cmdline),
         "downtime_target_ms": .int(50), "transport": .string("unix"), "time_limit_s": .int(timeLimit(env))]
    }

    func guest(_ env: BenchEnvironment) throws -> MigrationGuest {
        MigrationGuest(image: try env.image("memtouch"), memory: "256M", cmdline: cmdline)
    }
}
