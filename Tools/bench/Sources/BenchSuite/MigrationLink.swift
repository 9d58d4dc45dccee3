import Foundation
import Harness

/// How the two ends of a migration scenario are connected: a UNIX socket in the run's
/// directory, or TCP on loopback; and over how many connections the pages travel.
struct MigrationLink: Sendable {
    enum Transport: String, Sendable {
        case unix
        case tcp
    }

    let transport: Transport
    /// swiftvmm's `send --connections`; QEMU's `multifd-channels` (multifd on) when above 1.
    let connections: Int

    static let unix = MigrationLink(transport: .unix, connections: 1)

    static func tcp(connections: Int) -> MigrationLink { MigrationLink(transport: .tcp, connections: connections) }

    /// QEMU moves the pages with multifd (its channels), not on the main migration stream.
    var multifd: Bool { connections > 1 }

    /// A fresh address for one run: `unix:` a socket in `directory`, or `tcp:` a free port on 127.0.0.1.
    func address(in directory: URL) -> String {
        switch transport {
        case .unix: return "unix:" + directory.appendingPathComponent("mig.sock").path
        case .tcp: return "tcp:127.0.0.1:\(MigrationRig.freePort())"
        }
    }

    /// The socket file a UNIX address names (nil for TCP): it exists once the target listens.
    func socketPath(_ address: String) -> String? {
        transport == .unix ? String(address.dropFirst("unix:".count)) : nil
    }

    /// swiftvmm `send` arguments: always `--connections` over TCP (whose default is 4); on a
    /// UNIX socket only when not its default of 1, so those runs keep their old command line.
    var sendArguments: [String] {
        transport == .tcp || connections != 1 ? ["--connections", "\(connections)"] : []
    }

    /// What the results' parameters say about the link.
    var params: JSONObject { ["transport": .string(transport.rawValue), "connections": .int(connections)] }
}

let tcpNote = "TCP on loopback (127.0.0.1, a free port per run): swiftvmm `recv --listen tcp:…` and "
    + "`send --to tcp:… --connections N`; QEMU `-incoming tcp:…`, and with N > 1 the `multifd` capability "
    + "and `multifd-channels` N set on both sides (the destination with `-incoming defer`, then "
    + "`migrate-incoming`). Compare with migrate-random (UNIX socket, one connection, no multifd)."

/// migrate-random's guest over TCP on loopback, on one connection or several
/// (`migrate-random-tcp`, `migrate-random-tcpN`).
struct MigrateRandomTCP: MigrationScenario {
    let connections: Int
    let extra = true
    let inQuick = false
    let metrics = migrationMetrics

    var name: String { connections == 1 ? "migrate-random-tcp" : "migrate-random-tcp\(connections)" }
    var link: MigrationLink { .tcp(connections: connections) }
    var title: String {
        connections == 1
            ? "migrate-random over TCP on loopback, one connection (QEMU without multifd)"
            : "migrate-random over TCP on loopback, \(connections) connections (QEMU multifd, \(connections) channels)"
    }
    var notes: [String] { [tcpNote] + MigrateRandom().notes.prefix(1) }

    func params(_ env: BenchEnvironment) -> JSONObject {
        var p = MigrateRandom().params(env)
        for (k, v) in link.params { p[k] = v }
        return p
    }

    func guest(_ env: BenchEnvironment) throws -> MigrationGuest { try MigrateRandom().guest(env) }
}
