import Foundation
import Glibc
import Harness
import Testing

@Suite("harness: JSON and the JSON-lines client", .serialized)
struct JSONTests {
    @Test("parse and write keep key order, numbers' kinds and escapes")
    func roundTrip() throws {
        let text = #"{"b": 1, "a": [1.5, -2, 1e-05, true, null, "x\"\n\u00b5\ud83d\ude00"], "c": {}, "d": []}"#
        let v = try JSON.parse(text)
        #expect(v.object?.keys == ["b", "a", "c", "d"])
        #expect(v["b"] == .int(1))
        #expect(v["a"]?[0] == .double(1.5) && v["a"]?[1] == .int(-2) && v["a"]?[2]?.double == 1e-05)
        #expect(v["a"]?[5]?.string == "x\"\nµ😀")
        #expect(try JSON.parse(v.compact) == v)
        #expect(try JSON.parse(v.pretty()) == v)
        #expect(JSON.object(["k": .array([.int(1)])]).pretty() == "{\n \"k\": [\n  1\n ]\n}")
        #expect(throws: JSON.ParseError.self) { try JSON.parse("{\"a\": }") }
    }

    @Test("the client reads a QMP greeting, negotiates, skips events and reports errors")
    func qmpConversation() throws {
        let dir = try Paths.tempDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("qmp.sock").path
        // A fake QMP server: greeting, then one reply per request, an event before the second.
        let server = try Child("/usr/bin/python3", ["-c", """
            import socket, json
            s = socket.socket(socket.AF_UNIX); s.bind('\(path)'); s.listen(1)
            c, _ = s.accept(); f = c.makefile('rw')
            f.write('{"QMP": {"version": {}, "capabilities": []}}\\n'); f.flush()
            n = 0
            for line in f:
                req = json.loads(line); n += 1
                if n == 2: f.write('{"event": "STOP", "timestamp": {}}\\n')
                if req['execute'] == 'bad': f.write('{"error": {"class": "GenericError", "desc": "no such command"}}\\n')
                else: f.write(json.dumps({"return": {"echo": req['execute'], "args": req.get('arguments', {})}}) + '\\n')
                f.flush()
            """], name: "fake-qmp")
        defer { server.kill() }
        let c = try JSONLinesClient.qmp(path: path, child: server)
        #expect(c.greeting?["QMP"] != nil)
        let r = try c.execute("query-migrate", ["x": .int(1)])
        #expect(r["echo"]?.string == "query-migrate" && r["args"]?["x"] == .int(1))
        #expect(c.events.count == 1 && c.events.first?["event"]?.string == "STOP")
        let e = #expect(throws: HarnessError.self) { try c.execute("bad") }
        #expect(e?.description.contains("no such command") == true)
    }
}
