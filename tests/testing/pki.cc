#include "tests/testing/pki.h"

#include <fstream>

#include "tests/testing/process.h"

namespace wsync::testing {

std::string MakeTestPki(const std::string& dir, const std::vector<std::string>& names) {
  const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"};
  auto run = [](std::vector<std::string> argv) {
    RunResult r = Run(argv);
    return r.exit_code == 0 ? std::string() : argv[1] + ": " + r.out + r.err;
  };
  std::vector<std::string> ca = {"openssl", "req", "-x509"};
  ca.insert(ca.end(), ec.begin(), ec.end());
  ca.insert(ca.end(), {"-keyout", dir + "/ca.key", "-out", dir + "/ca.pem", "-days", "2", "-subj",
                       "/CN=wsync-test-ca", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                       "keyUsage=critical,keyCertSign,cRLSign"});
  if (std::string e = run(ca); !e.empty()) return e;
  const std::string ext = dir + "/ext.cnf";
  std::ofstream(ext) << "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n";
  int serial = 2;
  for (const std::string& n : names) {
    std::vector<std::string> req = {"openssl", "req"};
    req.insert(req.end(), ec.begin(), ec.end());
    req.insert(req.end(), {"-keyout", dir + "/" + n + ".key", "-out", dir + "/" + n + ".csr", "-subj", "/CN=" + n});
    if (std::string e = run(req); !e.empty()) return e;
    if (std::string e = run({"openssl", "x509", "-req", "-in", dir + "/" + n + ".csr", "-CA", dir + "/ca.pem",
                             "-CAkey", dir + "/ca.key", "-set_serial", std::to_string(serial++), "-days", "2",
                             "-extfile", ext, "-out", dir + "/" + n + ".pem"});
        !e.empty()) {
      return e;
    }
  }
  return "";
}

}  // namespace wsync::testing
