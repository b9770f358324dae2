#ifndef WSYNC_TESTS_TESTING_PKI_H_
#define WSYNC_TESTS_TESTING_PKI_H_

#include <string>
#include <vector>

namespace wsync::testing {

// A throwaway certificate authority made with the openssl command line:
// `<dir>/ca.pem`, and for each name `<dir>/<name>.pem` and `<dir>/<name>.key`
// (P-256 keys, valid for 127.0.0.1 and localhost, for both server and client
// authentication). Returns "" on success, else what openssl printed.
std::string MakeTestPki(const std::string& dir, const std::vector<std::string>& names);

}  // namespace wsync::testing

#endif  // WSYNC_TESTS_TESTING_PKI_H_
