// C++ under libspf.so: operator new/delete (plain, array, sized, aligned)
// and the standard containers, from several threads, all reach spf through
// malloc, aligned_alloc and free; malloc_usable_size recognising each
// pointer proves it (spf ends the process on a pointer it did not give).
#include <cstdio>
#include <cstdlib>
#include <malloc.h>
#include <map>
#include <new>
#include <string>
#include <thread>
#include <vector>

struct alignas(256) Wide {
    char bytes[300];
};

static void check(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "cxx: FAILED: %s\n", what);
        std::exit(1);
    }
}

int main() {
    int *one = new int(7);
    check(malloc_usable_size(one) >= sizeof(int), "new int is spf's");
    delete one;
    double *many = new double[1000];
    check(malloc_usable_size(many) >= 8000, "new[] is spf's");
    delete[] many;
    Wide *w = new Wide;
    check(reinterpret_cast<unsigned long>(w) % 256 == 0, "aligned new is aligned");
    check(malloc_usable_size(w) >= sizeof(Wide), "aligned new is spf's");
    delete w;
    std::vector<std::thread> threads;
    std::vector<std::size_t> sums(4);
    for (int t = 0; t < 4; t++) {
        threads.emplace_back([t, &sums] {
            std::map<std::string, std::vector<int>> m;
            for (int i = 0; i < 20000; i++) {
                std::string key = "key-" + std::to_string((i * 7919 + t) % 5000);
                m[key].push_back(i);
                if (i % 3 == 0) m.erase("key-" + std::to_string(i % 5000));
            }
            std::size_t sum = 0;
            for (auto &kv : m) sum += kv.first.size() + kv.second.size();
            sums[t] = sum;
        });
    }
    for (auto &th : threads) th.join();
    check(sums[0] > 0 && sums[3] > 0, "containers worked");
    try {
        std::vector<char> huge;
        huge.reserve(std::size_t(1) << 62);
        check(false, "a 4 EiB reserve must throw");
    } catch (const std::bad_alloc &) {
    }
    std::printf("cxx: ok\n");
    return 0;
}
