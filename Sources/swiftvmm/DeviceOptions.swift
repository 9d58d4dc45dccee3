import Machine

/// `--disk [vol=NAME,]path=P[,readonly]`
struct DiskSpec: Equatable {
    var path: String
    var volume: String
    var readonly: Bool
}

/// `--net tap=IFNAME[,mac=MAC]`
struct NetSpec: Equatable {
    var tap: String
    var mac: [UInt8]?
}

enum DeviceOptions {
    /// Splits `k=v,k=v,flag` into pairs; a bare word becomes (word, "").
    static func pairs(_ spec: String) -> [(String, String)] {
        spec.split(separator: ",").map { part in
            if let eq = part.firstIndex(of: "=") {
                return (String(part[..<eq]), String(part[part.index(after: eq)...]))
            }
            return (String(part), "")
        }
    }

    static func parseDisk(_ spec: String) throws -> DiskSpec {
        var path: String?
        var volume: String?
        var readonly = false
        for (k, v) in pairs(spec) {
            switch k {
            case "path": path = v
            case "vol": volume = v
            case "readonly", "ro": readonly = v.isEmpty || v == "on" || v == "true"
            default: throw fail("--disk '\(spec)': unknown key '\(k)' (expected path=, vol=, readonly)")
            }
        }
        guard let p = path, !p.isEmpty else { throw fail("--disk '\(spec)' has no path=") }
        let name = volume ?? String(p.split(separator: "/").last ?? Substring(p))
        guard !name.isEmpty else { throw fail("--disk '\(spec)': empty vol=") }
        return DiskSpec(path: p, volume: name, readonly: readonly)
    }

    static func parseNet(_ spec: String) throws -> NetSpec {
        var tap: String?
        var mac: [UInt8]?
        for (k, v) in pairs(spec) {
            switch k {
            case "tap": tap = v
            case "mac":
                guard let parts = VirtioNet.parseMAC(v) else {
                    throw fail("--net '\(spec)': mac '\(v)' is not six hex bytes like 52:54:00:12:34:56")
                }
                guard parts[0] & 1 == 0 else { throw fail("--net '\(spec)': mac '\(v)' is a multicast address") }
                mac = parts
            default: throw fail("--net '\(spec)': unknown key '\(k)' (expected tap=, mac=)")
            }
        }
        guard let t = tap, !t.isEmpty else { throw fail("--net '\(spec)' has no tap=") }
        guard t.utf8.count < 16 else { throw fail("--net '\(spec)': interface name '\(t)' is longer than 15 bytes") }
        return NetSpec(tap: t, mac: mac)
    }

    /// Adds the devices to `vm` in a fixed order (disks, then NICs) and returns the
    /// `virtio_mmio.device=` command-line tokens announcing them.
    static func attach(disks: [DiskSpec], nets: [NetSpec], to vm: VM) throws -> [String] {
        var tokens: [String] = []
        var volumes = Set<String>()
        for d in disks {
            guard volumes.insert(d.volume).inserted else { throw fail("--disk: volume name '\(d.volume)' is used twice") }
            do { tokens.append(try vm.addVirtioBlock(path: d.path, volume: d.volume, readonly: d.readonly)) } catch {
                throw fail("--disk: \(error)")
            }
        }
        for n in nets {
            do { tokens.append(try vm.addVirtioNet(tap: n.tap, mac: n.mac)) } catch {
                throw fail("--net: \(error)")
            }
        }
        return tokens
    }
}
