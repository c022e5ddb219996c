#!/usr/bin/perl
# Sisimai's side of benches/classify.rs: classify every file named on stdin (one path a line) with
# Debian's Sisimai (libsisimai-perl), REPS times, and print "messages recipients seconds" (reading the files
# included, interpreter start-up excluded).
use strict;
use warnings;
use Sisimai;
use Time::HiRes qw(time);

my $reps = shift // 1;
my @files = grep { length } map { chomp; $_ } <STDIN>;
my ($messages, $recipients) = (0, 0);
my $started = time;
for (1 .. $reps) {
    for my $file (@files) {
        my $results = Sisimai->make($file, 'delivered' => 1);
        $messages++;
        $recipients += scalar @$results if ref $results eq 'ARRAY';
    }
}
printf "%d %d %.6f\n", $messages, $recipients, time - $started;
